"""Framework-free timing helpers shared by the benchmark scripts.

Every figure is a median over repeats, after warm-up runs that are not counted (they pay for
compilation, caches and lazy initialization). A rate is work per second of the median time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable


def median_seconds(run: Callable[[], object], *, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` timed calls of ``run`` (which must wait for its results),
    after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: list[float], work: float) -> dict:
    """The raw times, their median, and ``work`` (steps, calls, images) per median second."""
    median = statistics.median(seconds)
    return {"seconds": [round(s, 4) for s in seconds], "median_s": round(median, 4),
            "rate": round(work / median, 2)}


def host() -> dict:
    """What the figures were measured on."""
    return {"machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "system": platform.system()}


def write_json(path: str | os.PathLike, result: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
