"""Collects the JSON files of one benchmark run into one table: printed, and written as JSON and
Markdown next to each other (``benchmarks/results/<device>.json`` and ``.md``).

Each target of issue 17 is checked in the table: a ratio of two figures from the same run.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

from timing import write_json

FRAMEWORK_NAMES = {"torch": "PyTorch", "mxnet": "MXNet", "jax": "JAX", "tensorflow": "TensorFlow"}
TARGETS = {"trainer_over_model_only": 0.9, "d2l_speedup": 5.0,
           "compiled_scratch_over_eager_builtin": 1.0, "chapter_seconds": 600,
           "rebuild_seconds": 60}


def mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def lenet_table(steps: list[dict]) -> list[str]:
    lines = ["| Framework | Model | Model only (steps/s) | Trainer end to end (steps/s) | "
             f"Trainer / model only (target ≥ {TARGETS['trainer_over_model_only']}) |",
             "|---|---|---:|---:|---:|"]
    for result in steps:
        for model, row in result.get("lenet", {}).get("models", {}).items():
            ratio = row["trainer_over_model_only"]
            lines.append(f"| {FRAMEWORK_NAMES[result['framework']]} | {model} | "
                         f"{row['model_only']['rate']:.0f} | {row['trainer']['rate']:.0f} | "
                         f"{ratio:.2f} ({mark(ratio >= TARGETS['trainer_over_model_only'])}) |")
    return lines


VARIANTS = ("scratch eager", "scratch compiled", "builtin eager", "builtin compiled")


def variants_row(row: dict) -> str:
    """The four rates of a row, then the compiled-scratch ratio checked against its target."""
    target = TARGETS["compiled_scratch_over_eager_builtin"]
    rates = ["–" if row[key] is None else f"{row[key]['rate']:.0f}" for key in VARIANTS]
    ratio = row["compiled_scratch_over_eager_builtin"]
    verdict = ("– (scratch not compilable)" if ratio is None
               else f"{ratio:.2f} ({mark(ratio >= target)})")
    return " | ".join(rates) + f" | {verdict} |"


def variants_header(first: str) -> list[str]:
    target = TARGETS["compiled_scratch_over_eager_builtin"]
    return [f"| Framework (compiler) | {first} | Scratch eager | Scratch compiled | Built-in eager | "
            f"Built-in compiled | Compiled scratch / eager built-in (target ≥ {target}) |",
            "|---|---|---:|---:|---:|---:|---:|"]


def bn_table(steps: list[dict]) -> list[str]:
    lines = variants_header("Input")
    for result in steps:
        for name, row in result["bn_layer"]["shapes"].items():
            lines.append(f"| {FRAMEWORK_NAMES[result['framework']]} ({result['compiler']}) | "
                         f"{name} {tuple(row['shape'])} | " + variants_row(row))
    return lines


def lenet_step_table(steps: list[dict]) -> list[str]:
    lines = variants_header("Steps timed")
    for result in steps:
        row = result["lenet_step"]
        lines.append(f"| {FRAMEWORK_NAMES[result['framework']]} ({result['compiler']}) | "
                     f"{row['steps_per_repeat']} | " + variants_row(row))
    return lines


def d2l_table(result: dict) -> list[str]:
    target = TARGETS["d2l_speedup"]
    lines = ["| Pipeline (PyTorch " + result["versions"].get("torch", "?") + ") | "
             "Epoch (s) | Training images/s |", "|---|---:|---:|"]
    for name, row in result["pipelines"].items():
        lines.append(f"| {name} | {row['median_epoch_s']:.1f} | {row['train_images_per_s']:.0f} |")
    lines.append(f"| **d2l_bn / d2l** (target ≥ {target}) | | **{result['speedup']:.1f}×** "
                 f"({mark(result['speedup'] >= target)}) |")
    return lines


CHAPTER_EPOCHS = 10  # each of the chapter's two models (BNLeNetScratch, BNLeNet) trains this long


def model_seconds(steps: dict) -> float | None:
    """What the chapter's two training runs cost at the model-only rates of this run: the part of
    a notebook's time that no pipeline work can remove."""
    lenet = steps.get("lenet") if steps else None
    if not lenet:
        return None
    return sum(CHAPTER_EPOCHS * lenet["train_steps_per_epoch"] / row["model_only"]["rate"]
               for row in lenet["models"].values())


def notebook_table(result: dict, steps: dict) -> list[str]:
    lines = ["| Notebook | Wall time (s) | of which training at the model-only rate (s) | "
             "Peak RSS of the kernel (MiB) |", "|---|---:|---:|---:|"]
    for row in result["notebooks"]:
        model = model_seconds(steps.get(row["framework"]))
        model = "–" if model is None else f"{model:.0f} ({model / row['seconds']:.0%})"
        lines.append(f"| {row['notebook']} | {row['seconds']:.0f} | {model} | "
                     f"{row['peak_rss_mib']} |")
    total, rebuild = result["total_seconds"], result["rebuild_seconds"]
    lines.append(f"| **all four** (target ≤ {TARGETS['chapter_seconds']} s) | **{total:.0f}** "
                 f"({mark(total <= TARGETS['chapter_seconds'])}) | | |")
    lines.append(f"| `make book` with nothing changed (target ≤ {TARGETS['rebuild_seconds']} s) | "
                 f"{rebuild:.0f} ({mark(rebuild <= TARGETS['rebuild_seconds'])}) | | |")
    return lines


def render(results: dict) -> str:
    steps = [results[fw] for fw in FRAMEWORK_NAMES if fw in results]
    host = next(r["host"] for r in results.values() if isinstance(r, dict) and "host" in r)
    lines = [f"Measured {results['date']} on {results['device']} ({host['cpus']} CPUs, "
             f"Python {host['python']}) by `{results['command']}`; medians of "
             f"{steps[0]['repeats'] if steps else '?'} repeats after warm-up.", ""]
    if steps and any("lenet" in s for s in steps):
        lines += ["**LeNet + BN, one epoch** (training steps per second of a whole epoch, "
                  "validation included):", ""] + lenet_table(steps) + [""]
    if steps:
        lines += ["**One batch-norm layer**, training-mode forward + backward (steps/s):", ""]
        lines += bn_table(steps) + [""]
    if steps and all("lenet_step" in s for s in steps):
        lines += ["**A whole LeNet training step** (SGD on staged batches, steps/s):", ""]
        lines += lenet_step_table(steps) + [""]
    if "d2l_pipeline" in results:
        lines += ["**PyTorch pipeline against the original d2l 1.0.3** (LeNet + built-in BN, "
                  "batch 128, same environment):", ""] + d2l_table(results["d2l_pipeline"]) + [""]
    if "notebooks" in results:
        lines += ["**Chapter notebooks**, 10 epochs per model:", ""]
        lines += notebook_table(results["notebooks"], results) + [""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the run's JSON files")
    parser.add_argument("--device", default="cpu", help="names the output files")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--command", default="make bench")
    args = parser.parse_args(argv)
    results = {"device": args.device, "command": args.command,
               "date": datetime.date.today().isoformat()}
    for path in sorted(args.folder.glob("*.json")):
        data = json.loads(path.read_text())
        results[data.get("framework", data["benchmark"])] = data
    table = render(results)
    print(table)
    write_json(args.out_dir / f"{args.device}.json", results)
    (args.out_dir / f"{args.device}.md").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
