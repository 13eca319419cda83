"""Wall time and peak memory of each chapter notebook, and the book rebuild with nothing changed.

Each committed notebook is executed afresh (a copy: the committed outputs are left alone) in its
framework's kernel, as ``make execute`` does; the time runs from starting the kernel to the end of
the last cell. While it runs, the resident memory (RSS) of the kernel and its child processes is
sampled every 0.1 s; the peak is reported. Then ``make book`` runs with nothing changed and is
timed, on a fresh clone of the last commit. Run with the book environment's Python (``make bench``
does).
"""

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

from timing import host, write_json

ROOT = Path(__file__).resolve().parent.parent


class PeakRSS(threading.Thread):
    """Samples the summed RSS of this process's descendants (the kernel) until stopped."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval, self.peak, self.done = interval, 0, threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.wait(self.interval):
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # gone between listing and reading
                    pass
            self.peak = max(self.peak, total)


def run_notebook(path: Path) -> dict:
    notebook = nbformat.read(path, as_version=4)
    framework = notebook.metadata["d2l_bn"]["framework"]
    client = NotebookClient(notebook, kernel_name=f"d2l-bn-{framework}", timeout=1800,
                            resources={"metadata": {"path": str(path.parent)}})
    sampler = PeakRSS()
    sampler.start()
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    return {"framework": framework, "notebook": str(path.relative_to(ROOT)),
            "seconds": round(seconds, 1), "peak_rss_mib": round(sampler.peak / 2**20),
            "slowest_cells": slowest_cells(notebook)}


def slowest_cells(notebook, count: int = 3) -> list[dict]:
    """The cells that took longest, from the timestamps nbclient records in their metadata."""
    cells = []
    for index, cell in enumerate(notebook.cells):
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            seconds = (datetime.fromisoformat(timing["shell.execute_reply"].rstrip("Z"))
                       - datetime.fromisoformat(timing["iopub.execute_input"].rstrip("Z")))
            cells.append({"cell": index, "seconds": round(seconds.total_seconds(), 1),
                          "first_line": cell.source.splitlines()[0] if cell.source else ""})
    return sorted(cells, key=lambda c: -c["seconds"])[:count]


def rebuild_seconds() -> float:
    """``make book`` on a fresh clone of the last commit whose environments are already built
    (this tree's ``.venv``, linked): once to build the site (untimed), then once more, timed.

    A clone, not this tree: the committed notebooks are what readers and CI get, and work in
    progress here must neither be executed nor timed.
    """
    with tempfile.TemporaryDirectory() as folder:
        clone = Path(folder, "d2l-bn")
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        # Cloned files are newer than the environments' stamps, and make would reinstall the
        # environments from the clone (pointing their editable d2l_bn at it): date them back.
        subprocess.run(["find", str(clone), "-exec", "touch", "-h", "-d", "@0", "{}", "+"],
                       check=True)
        (clone / ".venv").symlink_to(ROOT / ".venv")
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run(["make", "--no-print-directory", "book"], cwd=clone, check=True,
                           stdout=subprocess.DEVNULL)
            seconds.append(time.perf_counter() - start)
    return round(seconds[-1], 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--frameworks", nargs="*", default=["torch", "mxnet", "jax", "tensorflow"])
    parser.add_argument("--pages", nargs="*", default=["batch-norm"],
                        help="the pages whose notebooks are timed (default: the chapter)")
    args = parser.parse_args(argv)
    rows = []
    for framework in args.frameworks:
        for path in [ROOT / "notebooks" / framework / f"{page}.ipynb" for page in args.pages]:
            rows.append(run_notebook(path))
            print(f"{framework:>10} {path.name}: {rows[-1]['seconds']:.0f} s, peak RSS "
                  f"{rows[-1]['peak_rss_mib']} MiB", flush=True)
    total = round(sum(row["seconds"] for row in rows), 1)
    rebuild = rebuild_seconds()
    print(f"all notebooks: {total:.0f} s; book rebuild with nothing changed: {rebuild:.0f} s")
    write_json(args.out, {"benchmark": "notebooks", "host": host(), "notebooks": rows,
                          "total_seconds": total, "rebuild_seconds": rebuild})


if __name__ == "__main__":
    sys.exit(main())
