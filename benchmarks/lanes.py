"""The notebook check one notebook at a time with each framework's default threads, against two
notebooks at a time with one thread each (`make nbval JOBS=2 THREADS=1`, what `make test` runs),
side by side in one run, on the same notebooks.

On this 2-core machine a LeNet step at batch 128 gains little from a framework's second thread,
so two single-threaded kernels side by side finish sooner than one two-threaded kernel after the
other. Each way is timed from the start of `make` to its end (kernel starts included).

    python benchmarks/lanes.py                        # every notebook: about an hour
    python benchmarks/lanes.py --notebooks notebooks/torch/exercises.ipynb notebooks/jax/exercises.ipynb
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WAYS = {"one at a time, default threads": [],
        "two at a time, one thread each": ["JOBS=2", "THREADS=1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="+", help="default: all (make's NOTEBOOK_FILES)")
    args = parser.parse_args()
    selection = [f"NOTEBOOKS={' '.join(args.notebooks)}"] if args.notebooks else []
    seconds = {}
    for way, options in WAYS.items():
        start = time.perf_counter()
        result = subprocess.run(["make", "--no-print-directory", "nbval", *selection, *options],
                                cwd=ROOT)
        seconds[way] = time.perf_counter() - start
        if result.returncode:
            print(f"make nbval {' '.join(options)} failed", file=sys.stderr)
            return result.returncode
    for way, value in seconds.items():
        print(f"{way:<34} {value:8.0f} s")
    ratio = seconds["one at a time, default threads"] / seconds["two at a time, one thread each"]
    print(f"{'speed-up of two lanes':<34} {ratio:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
