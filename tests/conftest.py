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


def pytest_terminal_summary(terminalreporter):
    # The equivalence tests record the largest error per comparison: print them, so that a run
    # shows how close scratch, built-in and reference are, not only that they pass.
    import sys
    equivalence = sys.modules.get("equivalence")
    if equivalence is None or not equivalence.LARGEST:
        return
    terminalreporter.section("largest errors seen (equivalence tests)")
    terminalreporter.write_line(f"{'framework':<11} {'comparison':<52} {'max |error|':>11} "
                                f"{'/ tolerance':>11}")
    for (framework, what), (error, ratio) in sorted(equivalence.LARGEST.items()):
        terminalreporter.write_line(f"{framework:<11} {what:<52} {error:>11.2e} {ratio:>11.3f}")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a GPU that the framework sees (the test "
                                       "module's SEES_GPU); deselected, and said so, without one")


def pytest_collection_modifyitems(config, items):
    # Not skipped (skips fail the run): deselected, with a line that says which and why.
    without_gpu = [item for item in items if item.get_closest_marker("gpu")
                   and not getattr(item.module, "SEES_GPU", False)]
    if without_gpu:
        config.hook.pytest_deselected(items=without_gpu)
        items[:] = [item for item in items if item not in without_gpu]
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"deselected {len(without_gpu)} GPU test(s): this framework sees "
                                f"no GPU ({', '.join(item.name for item in without_gpu)})")
