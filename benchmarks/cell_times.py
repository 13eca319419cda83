"""Where a notebook's time goes: run its code cells in order, in this interpreter, and print the
wall time of each cell that takes a second or more, and the total.

Run with the framework's environment and the thread count to compare with, e.g. one thread as in
CI's nbval lanes:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \\
        .venv/mxnet/bin/python benchmarks/cell_times.py notebooks/mxnet/exercises.ipynb

Unlike ``make execute`` it needs no kernel and writes nothing; the cells' printed output is
swallowed, figures go to matplotlib's Agg backend, and the Colab install cell is skipped. The
kernel's own environment (its kernelspec's variables, e.g. TensorFlow's oneDNN setting) is not
applied: set it in the shell to match.
"""

import argparse
import contextlib
import io
import json
import time

import matplotlib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--at-least", type=float, default=1.0,
                        help="print the cells that take at least this many seconds")
    args = parser.parse_args()
    matplotlib.use("Agg")
    namespace, total = {"__name__": "__main__"}, 0.0
    with open(args.notebook, encoding="utf-8") as file:
        cells = json.load(file)["cells"]  # the framework's venv has no nbformat: plain JSON
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code" or cell.get("id") == "install":
            continue
        source = "".join(cell["source"])
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, f"cell {index}", "exec"), namespace)
        seconds = time.perf_counter() - start
        total += seconds
        if seconds >= args.at_least:
            print(f"{seconds:7.1f} s  cell {index:3d}: {source.splitlines()[0][:70]}",
                  flush=True)
    print(f"{total:7.1f} s  in all")


if __name__ == "__main__":
    main()
