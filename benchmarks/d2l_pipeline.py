"""Epoch throughput of the original d2l 1.0.3 pipeline against d2l_bn's, in one process.

Both train the same LeNet with built-in batch normalization (section 8.5 of the book) on the same
Fashion-MNIST, batch size 128, learning rate 0.1, with one torch and one torchvision:

* d2l 1.0.3: ``d2l.FashionMNIST`` (torchvision's dataset, each image turned into a PIL image,
  resized and converted by ``ToTensor`` in d2l's 4 DataLoader workers) and ``d2l.Trainer``, whose
  epoch includes its validation pass and its ProgressBoard plotting;
* d2l_bn: ``FashionMNIST`` (batches sliced from uint8 arrays in memory) and ``Trainer``, with its
  validation pass and the live figure redrawn once per epoch, as in the notebooks.

Whole epochs are timed; the figures are medians over --repeats epochs after --warmup epochs.

This environment is its own, apart from the chapter's five: d2l 1.0.3 pins numpy 1.23.5,
matplotlib 3.7.2 and others, so it goes in without its dependencies, on top of the versions that
requirements/lock/bench-d2l.txt holds (torch 2.14.1, a CUDA build that also runs on the CPU)::

    python3.11 -m venv .venv/bench-d2l
    .venv/bench-d2l/bin/pip install -r requirements/bench-d2l.txt -c requirements/lock/bench-d2l.txt
    .venv/bench-d2l/bin/pip install --no-deps d2l==1.0.3 -c requirements/lock/bench-d2l.txt
    .venv/bench-d2l/bin/pip install --no-deps -e .
    .venv/bench-d2l/bin/python benchmarks/d2l_pipeline.py --out benchmarks/results/cpu/d2l_pipeline.json

Fashion-MNIST comes from --data (default ``$D2L_BN_DATA``), a folder of the four canonical
archives, or else from d2l_bn's download cache; torchvision never downloads anything.
"""

import argparse
import contextlib
import gzip
import importlib.metadata
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # d2l plots through pyplot: no window outside a notebook

import torch  # noqa: E402
import torchvision  # noqa: E402
from d2l import torch as d2l  # noqa: E402
from torch import nn  # noqa: E402

from d2l_bn import torch as ours  # noqa: E402
from d2l_bn.data import fashion_mnist_files  # noqa: E402
from epoch_timer import EpochTimer  # noqa: E402
from timing import host, write_json  # noqa: E402


class BNLeNet(d2l.Classifier):
    """Section 8.5's concise LeNet with built-in BN, as the book writes it (d2l 1.0.3 lacks it);
    the same layers as ``d2l_bn``'s ``BNLeNet``, whose sizes are written out instead of lazy."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5), nn.LazyBatchNorm2d(),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.LazyConv2d(16, kernel_size=5), nn.LazyBatchNorm2d(),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(), nn.LazyLinear(120), nn.LazyBatchNorm1d(),
            nn.Sigmoid(), nn.LazyLinear(84), nn.LazyBatchNorm1d(),
            nn.Sigmoid(), nn.LazyLinear(num_classes))


class TimedTrainer(d2l.Trainer):
    """d2l's Trainer, recording the seconds of each whole ``fit_epoch`` (training, validation,
    plotting)."""

    def fit(self, model, data):
        self.epoch_seconds = []
        super().fit(model, data)

    def fit_epoch(self):
        start = time.perf_counter()
        super().fit_epoch()
        self.epoch_seconds.append(time.perf_counter() - start)


def d2l_data(batch_size, archives, folder):
    """``d2l.FashionMNIST``, read offline from ``archives``.

    It takes no ``root``: torchvision reads ``../data/FashionMNIST/raw/`` (d2l's default root),
    where the archives are decompressed, so that its ``download=True`` finds them and downloads
    nothing. torchvision loads both splits into memory, so ``folder`` may go afterwards.
    """
    raw = Path(folder, "data", "FashionMNIST", "raw")
    raw.mkdir(parents=True)
    for name, path in archives.items():
        with gzip.open(path) as packed, open(raw / name.removesuffix(".gz"), "wb") as unpacked:
            shutil.copyfileobj(packed, unpacked)
    cwd = Path(folder, "cwd")
    cwd.mkdir()
    with contextlib.chdir(cwd):
        return d2l.FashionMNIST(batch_size=batch_size)


def time_d2l(args, archives):
    with tempfile.TemporaryDirectory() as folder:
        data = d2l_data(args.batch_size, archives, folder)
    torch.manual_seed(0)
    model = BNLeNet(lr=args.lr)
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    trainer = TimedTrainer(max_epochs=args.warmup + args.repeats,
                           num_gpus=1 if args.device == "cuda" else 0)
    trainer.fit(model, data)
    what = (f"d2l.FashionMNIST (torchvision, per image PIL Resize + ToTensor, DataLoader with "
            f"{data.num_workers} workers) + d2l.Trainer (validation, ProgressBoard plots)")
    return trainer.epoch_seconds[args.warmup:], len(data.train), what


def time_d2l_bn(args):
    data = ours.FashionMNIST(batch_size=args.batch_size, root=args.data)
    torch.manual_seed(0)
    model = ours.BNLeNet(lr=args.lr)
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], ours.init_cnn)
    timer = EpochTimer()  # the live figure, drawn once per epoch, with each epoch's time
    trainer = ours.Trainer(max_epochs=args.warmup + args.repeats,
                           num_gpus=1 if args.device == "cuda" else 0, report=timer)
    trainer.fit(model, data)
    what = ("d2l_bn FashionMNIST (batches from in-memory uint8 arrays) + Trainer (validation, "
            "live figure redrawn per epoch)")
    return timer.epoch_seconds[args.warmup:], data.num_train, what


def summarize(seconds, num_images, what):
    median = statistics.median(seconds)
    return {"epoch_s": [round(s, 3) for s in seconds], "median_epoch_s": round(median, 3),
            "train_images_per_s": round(num_images / median, 1), "what": what}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--data", default=os.environ.get("D2L_BN_DATA"),
                        help="folder of the four Fashion-MNIST archives (default $D2L_BN_DATA)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per pipeline")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs before timing")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")

    load = os.getloadavg()[0]
    if load > 0.5:  # on 2 cores, torch's OpenMP threads slow down many times when sharing them
        print(f"warning: load average {load:.1f} over the last minute; other processes running "
              f"now would distort the timings", file=sys.stderr)
    archives = fashion_mnist_files(args.data)  # md5-checked (downloaded only without a folder)
    pipelines = {}
    # Both pipelines print outside a notebook (IPython's display prints a figure's repr, d2l's
    # clear_output an escape sequence): keep it off the summary.
    with contextlib.redirect_stdout(io.StringIO()):
        pipelines["d2l 1.0.3"] = summarize(*time_d2l(args, archives))
        pipelines["d2l_bn"] = summarize(*time_d2l_bn(args))
    speedup = pipelines["d2l 1.0.3"]["median_epoch_s"] / pipelines["d2l_bn"]["median_epoch_s"]

    result = {
        "benchmark": "d2l_pipeline",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "d2l": importlib.metadata.version("d2l"),
                     "d2l_bn": importlib.metadata.version("d2l_bn"), **host()},
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "lr": args.lr, "model": "LeNet + built-in BatchNorm",
        "warmup_epochs": args.warmup, "pipelines": pipelines, "speedup": round(speedup, 2)}
    for name, p in pipelines.items():
        print(f"{name:>10}: epochs {p['epoch_s']} s, median {p['median_epoch_s']:.2f} s, "
              f"{p['train_images_per_s']:.0f} training images/s")
    print(f"d2l_bn / d2l 1.0.3 throughput: {speedup:.1f}x ({result['device']}, "
          f"{result['torch_threads']} torch threads, torch {torch.__version__})")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
