"""Step rates of one framework, measured side by side in one process:

1. LeNet with scratch and with built-in BN: the model alone (batches staged in memory, bare
   training steps, then the validation forwards) against the ``d2l_bn`` Trainer end to end
   (data from the loader, loss and accuracy accumulated, the live figure redrawn every epoch).
   Both rates are training steps per second of a whole epoch, validation included, so their
   ratio is the pipeline's overhead.
2. One batch-norm layer, scratch and built-in, eager and compiled: a training-mode forward and
   backward pass on a convolutional (128, 6, 24, 24) and a dense (128, 120) input.
3. The same four variants for a whole LeNet training step (SGD on staged batches).

Run in the framework's environment, e.g.
``.venv/torch/bin/python benchmarks/steps.py --framework torch --out benchmarks/results/cpu/torch.json``
(``make bench`` runs all four and the report).
"""

import argparse
import contextlib
import importlib
import io
import sys

from epoch_timer import EpochTimer
from timing import host, median_seconds, summary, write_json

BN_SHAPES = {"conv": (128, 6, 24, 24), "dense": (128, 120)}


def lenet_rates(bench, d2l, args) -> dict:
    data = d2l.FashionMNIST(batch_size=args.batch_size)
    train, val = bench.stage(data.train_dataloader()), bench.stage(data.val_dataloader())
    results = {}
    for name in ("BNLeNetScratch", "BNLeNet"):
        run_epoch = bench.model_only(bench.build(name, train[0]))
        model_only = summary(median_seconds(lambda: run_epoch(train, val), warmup=args.warmup,
                                            repeats=args.repeats), len(train))
        timer = EpochTimer()
        trainer = d2l.Trainer(max_epochs=args.warmup + args.repeats, num_gpus=1, report=timer)
        with contextlib.redirect_stdout(io.StringIO()):  # display() prints reprs outside Jupyter
            trainer.fit(bench.build(name, train[0]), data)
        end_to_end = summary(timer.epoch_seconds[args.warmup:], len(train))
        results[name] = {"model_only": model_only, "trainer": end_to_end,
                         "trainer_over_model_only": round(end_to_end["rate"] / model_only["rate"], 3)}
        print(f"{bench.FRAMEWORK:>10} {name:<15} model only {model_only['rate']:7.1f} steps/s, "
              f"Trainer {end_to_end['rate']:7.1f} steps/s, ratio "
              f"{results[name]['trainer_over_model_only']:.2f}", flush=True)
    return {"batch_size": args.batch_size, "train_steps_per_epoch": len(train),
            "val_batches_per_epoch": len(val), "models": results}


def bn_layer_rates(bench, args) -> dict:
    results = {}
    for shape_name, shape in BN_SHAPES.items():
        row = {}
        for kind in ("scratch", "builtin"):
            for compiled in (False, True):
                label = f"{kind} {'compiled' if compiled else 'eager'}"
                step = bench.bn_step(kind, shape, compiled)
                if step is None:
                    row[label] = None
                    continue

                def calls(step=step):
                    for _ in range(args.bn_calls):
                        step()

                row[label] = summary(median_seconds(calls, warmup=1, repeats=args.repeats),
                                     args.bn_calls)
                print(f"{bench.FRAMEWORK:>10} BN {shape_name:<5} {label:<17} "
                      f"{row[label]['rate']:9.1f} steps/s", flush=True)
        eager_builtin = row["builtin eager"]["rate"]
        row["compiled_scratch_over_eager_builtin"] = (
            None if row["scratch compiled"] is None
            else round(row["scratch compiled"]["rate"] / eager_builtin, 3))
        results[shape_name] = {"shape": list(shape), **row}
    return {"calls_per_repeat": args.bn_calls, "shapes": results}


def lenet_step_rates(bench, d2l, args) -> dict:
    data = d2l.FashionMNIST(batch_size=args.batch_size)
    batches = bench.stage(data.train_dataloader())[:args.bn_calls]
    row = {}
    for name, kind in (("BNLeNetScratch", "scratch"), ("BNLeNet", "builtin")):
        for compiled in (False, True):
            label = f"{kind} {'compiled' if compiled else 'eager'}"
            step = bench.lenet_step(name, batches[0], compiled)
            if step is None:
                row[label] = None
                continue

            def steps(step=step):
                bench.wait([step(X, y) for X, y in batches])

            row[label] = summary(median_seconds(steps, warmup=1, repeats=args.repeats),
                                 len(batches))
            print(f"{bench.FRAMEWORK:>10} LeNet step {label:<17} {row[label]['rate']:9.1f} "
                  f"steps/s", flush=True)
    row["compiled_scratch_over_eager_builtin"] = (
        None if row["scratch compiled"] is None
        else round(row["scratch compiled"]["rate"] / row["builtin eager"]["rate"], 3))
    return {"steps_per_repeat": len(batches), **row}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", required=True,
                        choices=["torch", "jax", "tensorflow", "mxnet"])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs before timing")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bn-calls", type=int, default=50, help="BN steps per timed repeat")
    parser.add_argument("--skip-lenet", action="store_true", help="only the BN layer")
    args = parser.parse_args(argv)

    bench = importlib.import_module(f"bench_{args.framework}")
    d2l = importlib.import_module(f"d2l_bn.{args.framework}")
    result = {"benchmark": "steps", "framework": args.framework, "device": bench.device_name(),
              "compiler": bench.COMPILER, "versions": bench.versions(), "host": host(),
              "repeats": args.repeats, "warmup": args.warmup}
    if not args.skip_lenet:
        result["lenet"] = lenet_rates(bench, d2l, args)
    result["bn_layer"] = bn_layer_rates(bench, args)
    result["lenet_step"] = lenet_step_rates(bench, d2l, args)
    write_json(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
