"""The notebook check's own rules (tools/nbval_modes.py), on small notebooks run by nbval in the
book venv's plain python3 kernel."""

import os
import subprocess
import sys
import time

import nbformat
import pytest

from conftest import ROOT


def notebook(tmp_path, source: str, stored: list, tags=()) -> str:
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)})
    cell.outputs, cell.execution_count = stored, 1
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "case.ipynb"
    nbformat.write(nb, path)
    return str(path)


def nbval(path: str, *flags: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "nbval_modes",
         "--nbval", path, "--nbval-kernel-name", "python3", *flags],
        capture_output=True, text=True, env=env, cwd=path.rsplit("/", 1)[0], timeout=timeout)


def stdout(text: str):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def stderr(text: str):
    return nbformat.v4.new_output("stream", name="stderr", text=text)


def test_an_exact_output_that_changed_fails(tmp_path):
    result = nbval(notebook(tmp_path, "print(0.25)", [stdout("0.24\n")]))
    assert result.returncode == 1 and "1 failed" in result.stdout


def test_a_measured_output_is_run_but_not_compared(tmp_path):
    path = notebook(tmp_path, "print(0.25)\nassert 0.2 < 0.25", [stdout("0.24\n")],
                    tags=["measured"])
    assert nbval(path).returncode == 0
    failing = notebook(tmp_path, "print(0.25)\nassert 0.25 < 0.2", [stdout("0.24\n")],
                       tags=["measured"])
    assert nbval(failing).returncode == 1  # its assert still counts


def test_portable_mode_leaves_stderr_alone_and_strict_does_not(tmp_path):
    source = "import sys\nprint('exact')\nprint('a platform log line', file=sys.stderr)"
    path = notebook(tmp_path, source, [stdout("exact\n")])
    assert nbval(path).returncode == 1
    assert nbval(path, "--nbval-portable").returncode == 0
    changed = notebook(tmp_path, source, [stdout("other\n")])
    assert nbval(changed, "--nbval-portable").returncode == 1  # exact stdout still compared


def test_a_kernel_that_dies_fails_its_cell_at_once_saying_so(tmp_path):
    path = notebook(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", [])
    start = time.monotonic()
    result = nbval(path, "--nbval-cell-timeout", "600")
    assert result.returncode == 1
    assert "the kernel died while running this cell" in result.stdout
    assert time.monotonic() - start < 90  # not the 600 s of the cell timeout


def test_a_cell_that_runs_past_the_timeout_fails_even_if_the_interrupt_does_not_stop_it(tmp_path):
    # As MXNet's engine does: the interrupt does not end the cell, which then finishes cleanly.
    source = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "time.sleep(4)\nprint('finished')")
    path = notebook(tmp_path, source, [stdout("finished\n")], tags=["measured"])
    result = nbval(path, "--nbval-cell-timeout", "1")
    assert result.returncode == 1, result.stdout
    assert "ran past the cell timeout of 1 s" in result.stdout
    assert nbval(path, "--nbval-cell-timeout", "60").returncode == 0
