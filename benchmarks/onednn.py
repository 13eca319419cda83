"""What TensorFlow's oneDNN optimizations change for the book: LeNet + BN training step rates and
the numbers they compute, with ``TF_ENABLE_ONEDNN_OPTS=0`` against ``1`` (TensorFlow's default on
x86, and the kernel's setting since stop 40), side by side in one run.

The variable is read when TensorFlow loads, so each setting runs in its own process, the two
alternating (0, 1, 0, 1, ...) so that a slow spell of the machine hits both. Each process trains
both LeNets with ``train_step`` compiled two ways: with XLA, as the Trainer does by default, and
without (``jit_compile=False``), as the exercises page trains; staged Fashion-MNIST batches. From
the same initial weights and batches it records the loss of every step and the logits of a
validation batch after them, so that the two settings' numbers can be compared.

Run in the TensorFlow environment:
``.venv/tensorflow/bin/python benchmarks/onednn.py [--out benchmarks/results/cpu/onednn.json]``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from timing import host, write_json

SETTINGS = ("0", "1")
CASES = {f"{name}, {'XLA' if xla else 'no XLA'}": (name, xla)
         for xla in (True, False) for name in ("BNLeNetScratch", "BNLeNet")}


def worker(args) -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    from d2l_bn import tensorflow as d2l

    data = d2l.FashionMNIST(batch_size=args.batch_size, seed=0)
    batches = [(tf.constant(X), tf.constant(y)) for X, y in data.train_dataloader()]
    batches = batches[:args.steps]
    X_val, _ = next(iter(data.val_dataloader()))
    result = {}
    for name, (model_name, jit_compile) in CASES.items():
        keras.utils.set_random_seed(0)
        model = getattr(d2l, model_name)(lr=0.1)
        optimizer = model.configure_optimizers()
        step = tf.function(partial(d2l.train_step, model, optimizer), jit_compile=jit_compile)
        losses = []
        start = None
        for index, (X, y) in enumerate(batches):
            if index == args.warmup:
                start = time.perf_counter()
            losses.append(float(step(X, y)))  # float(): waits for the step
        seconds = time.perf_counter() - start
        logits = model(tf.constant(X_val), training=False).numpy()
        result[name] = {"rate": (len(batches) - args.warmup) / seconds, "losses": losses,
                        "logits": logits.tolist()}
    Path(args.worker_out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per model")
    parser.add_argument("--warmup", type=int, default=20, help="first steps, not timed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        return worker(args)

    runs = {setting: [] for setting in SETTINGS}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for setting in SETTINGS:
                out = Path(scratch) / f"{setting}-{round_}.json"
                env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "3"}
                subprocess.run([sys.executable, __file__, "--worker-out", str(out),
                                "--steps", str(args.steps), "--warmup", str(args.warmup),
                                "--batch-size", str(args.batch_size)], env=env, check=True)
                runs[setting].append(json.loads(out.read_text()))

    import numpy as np

    figures = {}
    print(f"{'model':<23} {'steps/s, oneDNN off':>20} {'on':>8} {'on/off':>7} "
          f"{'max |loss diff|':>16} {'max |logit diff|':>17} {'same run twice':>15}")
    for name in CASES:
        rates = {s: statistics.median(run[name]["rate"] for run in runs[s]) for s in SETTINGS}
        off, on = runs["0"][0][name], runs["1"][0][name]
        loss_diff = float(np.max(np.abs(np.subtract(off["losses"], on["losses"]))))
        logit_diff = float(np.max(np.abs(np.subtract(off["logits"], on["logits"]))))
        again = runs["0"][-1][name]["logits"]
        repeat_diff = float(np.max(np.abs(np.subtract(off["logits"], again))))
        figures[name] = {"steps_per_s": rates, "on_over_off": round(rates["1"] / rates["0"], 3),
                         "max_abs_loss_difference": loss_diff,
                         "max_abs_logit_difference": logit_diff,
                         "max_abs_logit_difference_same_setting": repeat_diff}
        print(f"{name:<23} {rates['0']:20.1f} {rates['1']:8.1f} {rates['1'] / rates['0']:7.2f} "
              f"{loss_diff:16.2e} {logit_diff:17.2e} {repeat_diff:15.2e}")
    if args.out:
        write_json(args.out, {"benchmark": "onednn", "host": host(), "steps": args.steps,
                              "warmup_steps": args.warmup, "rounds": args.rounds,
                              "models": figures})


if __name__ == "__main__":
    main()
