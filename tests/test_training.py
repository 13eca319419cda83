"""d2l_bn.training and d2l_bn.plotting, with plain Python callables standing in for a framework."""

import math

import pytest
from matplotlib.figure import Figure

from d2l_bn import training
from d2l_bn.plotting import plot_curves, plot_history
from d2l_bn.training import History, TrainingDiverged, run_epochs


def fake_epochs(losses, num_batches=3, interrupt_in=None):
    """train_epoch/evaluate callables that return ``losses`` in turn and record the calls."""
    calls = {"train": 0, "evaluate": 0, "batches": 0}

    def train_epoch(report):
        calls["train"] += 1
        for _ in range(num_batches):
            if calls["train"] == interrupt_in and calls["batches"] % num_batches == 1:
                raise KeyboardInterrupt
            calls["batches"] += 1
            report.batch_done()
        return losses[calls["train"] - 1]

    def evaluate():
        calls["evaluate"] += 1
        return losses[calls["evaluate"] - 1] + 0.1, 0.5

    return train_epoch, evaluate, calls


def test_history_has_one_entry_per_epoch():
    train_epoch, evaluate, calls = fake_epochs([2.0, 1.0, 0.5])
    history = History()
    result = run_epochs(history, 3, train_epoch, evaluate, num_batches=3, report="none")
    assert result is history and len(history) == 3
    assert history.epoch == [1, 2, 3] and history.train_loss == [2.0, 1.0, 0.5]
    assert history.val_loss == [2.1, 1.1, 0.6] and history.val_acc == [0.5] * 3
    assert calls == {"train": 3, "evaluate": 3, "batches": 9}


def test_after_epoch_runs_once_each_epoch_after_it_is_recorded():
    train_epoch, evaluate, _ = fake_epochs([2.0, 1.0, 0.5])
    history, seen = History(), []
    run_epochs(history, 3, train_epoch, evaluate, report="none",
               after_epoch=lambda epoch: seen.append((epoch, len(history))))
    assert seen == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_divergence_is_raised_at_the_end_of_the_bad_epoch(bad):
    train_epoch, evaluate, calls = fake_epochs([2.0, 1.0, bad, 0.5])
    history = History()
    with pytest.raises(TrainingDiverged) as info:
        run_epochs(history, 4, train_epoch, evaluate, lr=0.8, report="none")
    message = str(info.value)
    for words in ("epoch 3", str(bad), "learning rate 0.8", "halve it, to 0.4", "check the inputs",
                  "trainer.history"):
        assert words in message
    assert isinstance(info.value, FloatingPointError)
    assert info.value.epoch == 3 and info.value.history is history and history.epoch == [1, 2]
    assert calls == {"train": 3, "evaluate": 2, "batches": 9}  # whole epoch ran, not evaluated


def test_keyboard_interrupt_stops_cleanly(capsys):
    train_epoch, evaluate, _ = fake_epochs([2.0, 1.0, 0.5, 0.4], interrupt_in=3)
    history = run_epochs(History(), 4, train_epoch, evaluate, report="none")
    assert history.epoch == [1, 2]
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and "interrupted at epoch 3 of 4" in lines[0] and "kept" in lines[0]
    assert "Traceback" not in captured.err


def test_progress_bar_goes_to_stderr_with_epoch_and_losses(capsys):
    train_epoch, evaluate, _ = fake_epochs([2.0, 1.0])
    run_epochs(History(), 2, train_epoch, evaluate, num_batches=3, report="bar")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "epoch 2/2" in captured.err and "6/6" in captured.err
    assert "train_loss=1.000" in captured.err and "val_acc=0.500" in captured.err


def test_auto_report_outside_a_notebook_is_the_bar():
    assert not training.in_notebook()
    assert isinstance(training.make_report("auto"), training.ProgressBar)
    with pytest.raises(ValueError, match="'figure', 'bar' or 'none'"):
        training.make_report("plot")


def test_a_report_instance_is_used_as_given():
    class Recorder(training.Report):
        def __init__(self):
            self.events = []

        def epoch_start(self, epoch):
            self.events.append(("start", epoch))

        def batch_done(self):
            self.events.append("batch")

        def epoch_done(self, history):
            self.events.append(("done", len(history)))

    recorder = Recorder()
    train_epoch, evaluate, _ = fake_epochs([1.0, 0.5], num_batches=2)
    run_epochs(History(), 2, train_epoch, evaluate, report=recorder)
    assert recorder.events == [("start", 1), "batch", "batch", ("done", 1),
                               ("start", 2), "batch", "batch", ("done", 2)]


def test_live_figure_is_displayed_once_and_updated_per_epoch(monkeypatch):
    import IPython.display
    import matplotlib.pyplot as plt

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(("display", obj))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    figures_before = plt.get_fignums()
    train_epoch, evaluate, _ = fake_epochs([2.0, 1.0, 0.5])
    run_epochs(History(), 3, train_epoch, evaluate, report="figure")
    assert [kind for kind, _ in shown] == ["display", "update", "update", "update"]
    for _, image in shown:
        assert image.format == "png" and image.data.startswith(b"\x89PNG")
    assert plt.get_fignums() == figures_before  # nothing left for the inline backend to show


def test_live_figure_outside_ipython_prints_one_line_per_epoch(capsys):
    train_epoch, evaluate, _ = fake_epochs([2.0, 1.0])
    history = run_epochs(History(), 2, train_epoch, evaluate, report="figure")
    assert len(history) == 2
    assert capsys.readouterr().out.count("Image") == 3  # the first display, then one per epoch


def test_plot_history_draws_three_labelled_curves():
    history = {"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6],
               "val_acc": [0.6, 0.8]}
    ax = Figure().add_subplot()
    assert plot_history(history, ax) is ax
    assert [line.get_label() for line in ax.get_lines()] == ["train loss", "val loss", "val acc"]
    assert list(ax.get_lines()[2].get_ydata()) == [0.6, 0.8]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() and ax.get_legend() is not None


def test_plot_history_takes_a_history_and_makes_its_own_figure():
    import matplotlib.pyplot as plt

    history = History()
    history.append(1, 1.0, 1.1, 0.6)
    ax = plot_history(history)
    try:
        assert len(ax.get_lines()) == 3
    finally:
        plt.close(ax.figure)


def test_history_repr_is_one_line():
    history = History()
    assert repr(history) == "History(no epochs)"
    history.append(1, 1.0, 1.25, 0.5)
    history.append(2, 0.5, 0.75, 0.875)
    assert repr(history) == ("History(2 epochs; epoch 2: train_loss 0.5000, val_loss 0.7500, "
                             "val_acc 0.8750)")


def test_plot_curves_draws_one_labelled_line_per_curve():
    ax = Figure().subplots()
    assert plot_curves({"with BN": [0.5, 0.7, 0.8], "without BN": [0.1, 0.1, 0.3]},
                       "validation accuracy", ax=ax) is ax
    assert [line.get_label() for line in ax.get_lines()] == ["with BN", "without BN"]
    assert list(ax.get_lines()[1].get_xdata()) == [1, 2, 3]
    assert list(ax.get_lines()[1].get_ydata()) == [0.1, 0.1, 0.3]
    assert ax.get_ylabel() == "validation accuracy"


def test_plot_shared_statistics_draws_the_same_grid_for_either_layout():
    import matplotlib.pyplot as plt
    import numpy as np

    from d2l_bn.plotting import plot_shared_statistics

    mask = np.zeros((3, 6, 4, 4), dtype=bool)
    mask[:, 0] = True  # batch normalization's pool of channel 0
    images = []
    for layout, array in (("NCHW", mask), ("NHWC", mask.transpose(0, 2, 3, 1))):
        plot_shared_statistics({"batch": array}, layout=layout)
        ax = plt.gcf().axes[0]
        images.append(ax.get_images()[0].get_array())
        assert ax.get_title() == "batch: 48 values"
        plt.close("all")
    assert images[0].shape == (3 * 4, 6 * 4) and np.array_equal(images[0], images[1])
    assert images[0][:, :4].all() and not images[0][:, 4:].any()  # channel 0, every example
    with pytest.raises(ValueError, match="layout"):
        plot_shared_statistics({"batch": mask}, layout="CHWN")
