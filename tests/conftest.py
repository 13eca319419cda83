import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """The offline Fashion-MNIST archives: $D2L_BN_DATA, else ../shared/data/fashion-mnist."""
    root = Path(os.environ.get("D2L_BN_DATA", ROOT.parent / "shared" / "data" / "fashion-mnist"))
    if not (root / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST archives not found in {root}: set D2L_BN_DATA to their folder")
    return root


def pytest_sessionfinish(session, exitstatus):
    # A skipped test is a test that did not run: in this project's test command that is a failure.
    if os.environ.get("D2L_BN_NO_SKIPS") == "1" and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and reporter.stats.get("skipped"):
            reporter.write_line("FAILED: tests were skipped, and D2L_BN_NO_SKIPS=1 forbids that",
                                red=True)
            session.exitstatus = 1
