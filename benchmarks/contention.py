"""What other load costs the benchmarks: PyTorch's LeNet + BN training step rate alone, against the
same step beside one busy ``nice -n 19`` PyTorch job, side by side in one run.

On a 2-core machine torch's two OpenMP threads share both cores with anything else running.
Run in the torch environment:
``.venv/torch/bin/python benchmarks/contention.py``.
"""

import os
import subprocess
import sys
import time

import torch

from d2l_bn import torch as d2l

# Another PyTorch job (its own two OpenMP threads), as a second notebook or test run would be.
BUSY = ("import torch\nx = torch.rand(512, 512)\nwhile True:\n    x = torch.tanh(x @ x)")


def steps_per_second(steps: int = 100) -> float:
    torch.manual_seed(0)
    model = d2l.BNLeNet(lr=0.1)
    X, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    model.apply_init([X], d2l.init_cnn)
    optimizer = model.configure_optimizers()
    model.train()

    def step():
        loss = model.loss(model(X), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(10):  # warm-up, not timed
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    alone = steps_per_second()
    busy = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", BUSY])
    try:
        beside = steps_per_second(steps=20)
    finally:
        busy.kill()
        busy.wait()
    print(f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads: BNLeNet step "
          f"{alone:.1f} steps/s alone, {beside:.1f} steps/s beside one nice -n 19 busy process "
          f"({alone / beside:.2f}x slower)")


if __name__ == "__main__":
    main()
