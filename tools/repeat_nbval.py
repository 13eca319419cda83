"""Run one notebook's check several times in a row and say how each run ended: a kernel that
dies only sometimes (a crash, or killed for memory) shows itself here, with the kernel's peak
memory beside each run.

    .venv/book/bin/python tools/repeat_nbval.py notebooks/jax/batch-norm-devices.ipynb --runs 5
    .venv/book/bin/python tools/repeat_nbval.py notebooks/jax/exercises.ipynb --runs 3 -- THREADS=1

Each run is ``make nbval NOTEBOOKS=<notebook>`` (strict, in the notebook's framework kernel;
arguments after ``--`` go to make). While it runs, the resident memory of its processes (pytest,
the kernel and whatever the kernel starts) is sampled every half second. At the end: a line per
run (exit status, seconds, peak memory of the largest process and of all of them together), and
the kernel's out-of-memory kills that ``dmesg`` reports, if it can be read.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    """The largest resident set of ``process`` and its descendants, and their sum, in bytes."""
    sizes = []
    for member in [process, *process.children(recursive=True)]:
        try:
            sizes.append(member.memory_info().rss)
        except psutil.Error:  # ended between the listing and the reading
            pass
    return max(sizes, default=0), sum(sizes)


def one_run(notebook: str, make_args: list[str]) -> dict:
    start = time.monotonic()
    process = subprocess.Popen(["make", "--no-print-directory", "nbval", f"NOTEBOOKS={notebook}",
                                *make_args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    watched = psutil.Process(process.pid)
    peak_process = peak_total = 0
    while process.poll() is None:
        try:
            largest, total = tree_rss(watched)
        except psutil.Error:
            break
        peak_process, peak_total = max(peak_process, largest), max(peak_total, total)
        time.sleep(0.5)
    output = process.communicate()[0]
    return {"returncode": process.returncode, "seconds": time.monotonic() - start,
            "peak_process_gb": peak_process / 2**30, "peak_total_gb": peak_total / 2**30,
            "tail": output.strip().splitlines()[-15:]}


def oom_kills() -> list[str] | None:
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [line for line in log.splitlines() if "Out of memory" in line or "oom-kill" in line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", help="a notebook's path, e.g. notebooks/jax/exercises.ipynb")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("make_args", nargs="*", help="after --: variables for make, e.g. THREADS=1")
    args = parser.parse_args()
    if not (ROOT / args.notebook).is_file():
        parser.error(f"no notebook {args.notebook} (give its path from the repository root)")
    kills_before = oom_kills()
    results = []
    for run in range(1, args.runs + 1):
        result = one_run(args.notebook, args.make_args)
        results.append(result)
        print(f"run {run}: exit {result['returncode']}, {result['seconds']:.0f} s, peak memory "
              f"{result['peak_process_gb']:.2f} GB (one process), "
              f"{result['peak_total_gb']:.2f} GB (all)", flush=True)
        if result["returncode"] != 0:
            print("\n".join("    " + line for line in result["tail"]), flush=True)
    kills_after = oom_kills()
    if kills_after is None:
        print("dmesg cannot be read here: out-of-memory kills unknown")
    else:
        new = kills_after[len(kills_before or []):]
        print(f"out-of-memory kills during these runs: {len(new)}")
        for line in new:
            print("    " + line)
    failed = sum(result["returncode"] != 0 for result in results)
    print(f"{args.notebook}: {args.runs - failed} of {args.runs} runs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
