"""What one short training run of the exercises' MLP costs: the fixed cost of a ``Trainer.fit``
(building, compiling) and its time per step, for each normalization, at a small and a large
batch, side by side in one run.

The exercises page (chapters/exercises.md) trains the MLP over a hundred times, a few hundred
steps each, so both figures matter. Three fits of a new model are timed: 1 epoch of 64 steps,
1 epoch again, 4 epochs. The per-step time is the difference of the last two over the 192 extra
steps; the fixed cost is what a 1-epoch fit takes beyond its 64 steps, the first time and again
(JAX reuses the compiled steps of an equal model, as the page's seeds do; the others do not).
Validation, 2,048 images in batches of 512 as on the page, is counted in both. For TensorFlow
both ways of compiling are timed (``jit_compile=True``, the Trainer's default, and ``False``, the
page's choice).

Run with the framework's environment, one thread as in CI's nbval lanes, e.g.:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \\
        TF_ENABLE_ONEDNN_OPTS=1 MXNET_CPU_WORKER_NTHREADS=1 \\
        .venv/tensorflow/bin/python benchmarks/mlp_runs.py tensorflow
"""

import argparse
import importlib
import time

NORMS = (None, "batch", "layer", "group")
STEPS_PER_EPOCH = 64


def fit_seconds(d2l, framework: str, norm, batch_size: int, epochs: int, trainer_options) -> float:
    data = d2l.FashionMNIST(batch_size=batch_size, val_batch_size=512, seed=0)
    data.train = tuple(array[:batch_size * STEPS_PER_EPOCH] for array in data.train)
    data.val = tuple(array[:2048] for array in data.val)
    start = time.perf_counter()
    model = d2l.MLP(lr=0.1 * (batch_size / 128) ** 0.5, norm=norm)
    if framework in ("torch", "mxnet"):  # their models are initialized on a batch, as the page does
        model.apply_init([next(iter(data.val_dataloader()))[0]], d2l.init_cnn)
    d2l.Trainer(max_epochs=epochs, report="none", **trainer_options).fit(model, data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=["torch", "mxnet", "jax", "tensorflow"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args()
    d2l = importlib.import_module(f"d2l_bn.{args.framework}")
    variants = ({"jit_compile": True}, {"jit_compile": False}) \
        if args.framework == "tensorflow" else ({},)
    # Warm-up (imports, data), with a model unlike any timed one: JAX would reuse its compile
    fit_seconds(d2l, args.framework, "batch", 64, 1, variants[0])
    print(f"{args.framework}: the exercises' MLP, fixed cost of a fit (s) and time per step "
          f"(ms), validation included")
    for options in variants:
        for batch_size in args.batch_sizes:
            for norm in NORMS:
                first, again, four = (fit_seconds(d2l, args.framework, norm, batch_size,
                                                  epochs, options) for epochs in (1, 1, 4))
                per_step = (four - again) / (3 * STEPS_PER_EPOCH)
                label = ", ".join(f"{key}={value}" for key, value in options.items())
                print(f"  {label + ', ' if label else ''}batch {batch_size:3d}, "
                      f"norm {str(norm):>5}: fixed {first - STEPS_PER_EPOCH * per_step:5.2f} s "
                      f"(again {again - STEPS_PER_EPOCH * per_step:5.2f} s), "
                      f"{per_step * 1000:5.2f} ms per step", flush=True)


if __name__ == "__main__":
    main()
