"""The notebooks' training runs over several seeds, for the thresholds of their asserts.

A trained model's accuracy is a *measured* output: another seed, thread count, BLAS or GPU gives
another number. Each assert on one must hold over seeds with a margin, so this script reruns what
the notebooks train, as the notebooks do it, with seeds 0, 1, 2, ... (the model's initial weights
and the data's shuffling both follow the seed; seed 0 is what the committed notebooks ran):

- ``chapter``: `chapters/batch-norm.md`, LeNet with the scratch and with the built-in layer and
  without batch normalization, 10 epochs at batch 128, lr 0.1, the final validation accuracy (and,
  per epoch, the validation accuracy with moving averages and, for the scratch layer, as
  `chapters/batch-norm-practice.md` trains it, with statistics recomputed after the epoch);
- ``devices``: `chapters/batch-norm-devices.md`, 500 steps of 8 images per device on two
  devices, random or class-skewed shards, per-device or synchronized statistics, the validation
  accuracy and loss.

Run one framework at a time, in its environment; each result is appended to ``--out`` as one JSON
line as soon as it is measured, so a long run that is stopped keeps what it finished:

    .venv/torch/bin/python benchmarks/seeds.py --framework torch --seeds 0 1 2 --out seeds.jsonl
    .venv/book/bin/python benchmarks/seeds.py --report seeds.jsonl   # the table, any venv

``make seeds FRAMEWORK=torch SEEDS="0 1 2"`` does the first; ``THREADS=1`` (as for ``make nbval``)
runs it with one thread per framework, another floating-point path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import statistics
import time
from pathlib import Path

CHAPTER_RUNS = ("BNLeNetScratch", "BNLeNet", "LeNet")  # LeNet: NormLeNet without norms
DEVICES_RUNS = [(shards, stats) for shards in ("random", "class-skewed")
                for stats in ("per device", "synchronized")]


def chapter_run(framework: str, d2l, name: str, seed: int) -> dict:
    """One of the chapter's three 10-epoch runs, as its cells do it, with ``seed``."""
    data = d2l.FashionMNIST(batch_size=128, seed=seed)
    if name == "LeNet":
        def model_class(lr):
            return d2l.NormLeNet(lr=lr, norms=(None,) * 4)
    else:
        model_class = getattr(d2l, name)
    if framework == "torch":
        import torch
        torch.manual_seed(seed)
        model = model_class(lr=0.1)
        model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
        trainer = d2l.Trainer(max_epochs=10, num_gpus=1, report="none")
    elif framework == "mxnet":
        import mxnet as mx
        mx.random.seed(seed)
        model = model_class(lr=0.1)
        model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
        trainer = d2l.Trainer(max_epochs=10, num_gpus=1, report="none")
    elif framework == "jax":
        model = model_class(lr=0.1)
        trainer = d2l.Trainer(max_epochs=10, num_gpus=1, seed=seed, report="none")
    else:
        import keras
        keras.utils.set_random_seed(seed)
        model = model_class(lr=0.1)
        trainer = d2l.Trainer(max_epochs=10, num_gpus=1, report="none")
    recomputed_acc = []
    if name == "BNLeNetScratch":  # as the chapter's cell records it
        history = trainer.fit(model, data, after_epoch=lambda epoch: recomputed_acc.append(
            d2l.recomputed_val_accuracy(trainer, model, data)))
    else:
        history = trainer.fit(model, data)
    return {"val_acc": float(history.val_acc[-1]), "val_loss": float(history.val_loss[-1]),
            "val_acc_per_epoch": [float(a) for a in history.val_acc],
            "recomputed_acc_per_epoch": [float(a) for a in recomputed_acc]}


def devices_runs(dp, seed: int) -> dict:
    """The across-devices page's four 500-step runs, with ``seed``."""
    results = {}
    for shards, stats in DEVICES_RUNS:
        run = dp.train_data_parallel(per_device=8, num_steps=500, skewed=shards == "class-skewed",
                                     synchronized=stats == "synchronized", seed=seed)
        results[f"{shards}, {stats}"] = {"val_acc": float(run["val_acc"]),
                                         "val_loss": float(run["val_loss"])}
    return results


def measure(args) -> None:
    if args.framework == "jax" and "devices" in args.pages:
        from d2l_bn.parallel import jax as dp_jax
        dp_jax.cpu_devices(2)  # before JAX computes anything
    if args.framework == "tensorflow" and "devices" in args.pages:
        from d2l_bn.parallel import tensorflow as dp_tf
        dp_tf.cpu_strategy(2)
    d2l = importlib.import_module(f"d2l_bn.{args.framework}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for page in args.pages:
            runs = (CHAPTER_RUNS if page == "chapter" else ["data parallel"])
            for name in runs:
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    if page == "chapter":
                        results = {name: chapter_run(args.framework, d2l, name, seed)}
                    else:
                        dp = importlib.import_module(f"d2l_bn.parallel.{args.framework}")
                        results = devices_runs(dp, seed)
                seconds = time.perf_counter() - start
                for run, values in results.items():
                    line = {"framework": args.framework, "page": page, "run": run, "seed": seed,
                            **values, "seconds": round(seconds, 1)}
                    with out.open("a") as file:
                        file.write(json.dumps(line) + "\n")
                    print(json.dumps(line), flush=True)


def report(path: str) -> None:
    """min/median/max of each run's validation accuracy over its seeds."""
    rows: dict[tuple, list] = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        rows.setdefault((record["framework"], record["page"], record["run"]), []).append(record)
    print("| framework | page | run | seeds | val. accuracy min / median / max | val. loss max |")
    print("|---|---|---|---|---|---|")
    for (framework, page, run), records in sorted(rows.items()):
        accs = [r["val_acc"] for r in records]
        seeds = ",".join(str(r["seed"]) for r in sorted(records, key=lambda r: r["seed"]))
        print(f"| {framework} | {page} | {run} | {seeds} | {min(accs):.3f} / "
              f"{statistics.median(accs):.3f} / {max(accs):.3f} | "
              f"{max(r['val_loss'] for r in records):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["torch", "mxnet", "jax", "tensorflow"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pages", nargs="+", choices=["chapter", "devices"],
                        default=["chapter", "devices"])
    parser.add_argument("--out", default="_build/seeds.jsonl")
    parser.add_argument("--report", metavar="JSONL", help="print the table of a finished run")
    args = parser.parse_args()
    if args.report:
        report(args.report)
    elif args.framework:
        measure(args)
    else:
        parser.error("give --framework to measure, or --report to print a table")


if __name__ == "__main__":
    main()
