"""What `make envs` downloads: the size of each environment's wheels, from their lock files.

    python tools/download_sizes.py [requirements/lock/torch.txt ...]

For every `name==version` line it asks PyPI's index for that release's files and takes the
wheel that pip would pick on this interpreter's platform (the first of `packaging.tags.sys_tags()`
that a wheel carries), then prints the total per lock file. A local build (`torch==2.13.0+cpu`)
is not on PyPI: its size is that of the matching wheel in PyTorch's CPU index when that index is
reachable, else of a local copy in pip's find-links folder; a line found in neither is reported.
Needs PyPI; run it with the Python the environments use (3.11).
"""

import argparse
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from packaging.tags import sys_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# PyPI's simple index as JSON (PEP 691), which gives each file's size (PEP 700).
PYPI = "https://pypi.org/simple/{name}/"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu/torch/"
TAG_RANK = {tag: rank for rank, tag in enumerate(sys_tags())}


def best_wheel(filenames_and_sizes):
    """The (filename, size) pip would choose here, or None when no wheel fits this platform."""
    ranked = []
    for filename, size in filenames_and_sizes:
        try:
            tags = parse_wheel_filename(filename)[3]
        except InvalidWheelFilename:  # an sdist, or an old upload with a nonstandard name
            continue
        ranks = [TAG_RANK[tag] for tag in tags if tag in TAG_RANK]
        if ranks:
            ranked.append((min(ranks), filename, size))
    return min(ranked)[1:] if ranked else None


def pypi_wheel(name: str, version: str):
    request = urllib.request.Request(PYPI.format(name=canonicalize_name(name)),
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        files = json.load(reply)["files"]
    return best_wheel((file["filename"], file["size"]) for file in files
                      if wheel_version(file["filename"]) == Version(version))


def wheel_version(filename: str):
    try:
        return parse_wheel_filename(filename)[1]
    except InvalidWheelFilename:  # an sdist, or an old upload with a nonstandard name
        return None


def local_wheel(name: str, version: str):
    """A local build: PyTorch's CPU index if it answers, else pip's find-links folders."""
    version_pattern = r"(?:\+|%2B)".join(re.escape(part) for part in version.split("+"))
    pattern = re.compile(rf"{re.escape(name)}-{version_pattern}-[^\"'<>/]*\.whl", re.IGNORECASE)
    try:
        with urllib.request.urlopen(TORCH_CPU_INDEX, timeout=10) as reply:
            page = reply.read().decode()
        names = sorted(set(match.group(0).replace("%2B", "+") for match in pattern.finditer(page)))
        wheel = best_wheel((filename, None) for filename in names)
        if wheel:
            request = urllib.request.Request(TORCH_CPU_INDEX + wheel[0].replace("+", "%2B"),
                                             method="HEAD")
            with urllib.request.urlopen(request, timeout=30) as reply:
                size = int(reply.headers["Content-Length"])
            print(f"  {name}=={version}: {size / 1e6:,.0f} MB from {TORCH_CPU_INDEX}")
            return wheel[0], size
    except OSError:
        pass
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                            text=True).stdout
    folders = re.findall(r"find-links='([^']*)'", config)
    candidates = [(path.name, path.stat().st_size) for folder in folders
                  for path in Path(folder).glob("*.whl") if pattern.fullmatch(path.name)]
    wheel = best_wheel(candidates)
    if wheel:
        print(f"  {name}=={version}: {wheel[1] / 1e6:,.0f} MB, the size of the local copy in "
              f"{' '.join(sorted(set(folders)))} ({TORCH_CPU_INDEX} is not reachable from here)")
    return wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="*", type=Path,
                        default=[ROOT / "requirements" / "lock" / f"{env}.txt"
                                 for env in ("book", "torch", "jax", "tensorflow", "mxnet")])
    args = parser.parse_args()
    missing = 0
    grand_total = 0
    for lock in args.locks:
        total = 0
        for line in lock.read_text().split():
            name, _, version = line.partition("==")
            wheel = local_wheel(name, version) if "+" in version else pypi_wheel(name, version)
            if wheel is None:
                print(f"  {lock.name}: no wheel of {line} found for this platform")
                missing += 1
                continue
            total += wheel[1]
        grand_total += total
        print(f"{lock.relative_to(ROOT) if lock.is_relative_to(ROOT) else lock}: "
              f"{total / 1e6:,.0f} MB of wheels")
    print(f"all: {grand_total / 1e6:,.0f} MB")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
