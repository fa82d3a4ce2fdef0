"""Start-up cost of each stage's job: the CPU seconds a fresh `python -m moir.<stage>` spends importing, before it
does any work, against importing torch alone (the floor of any stage that runs a model).

    python benchmarks/startup.py              # every stage, best of 3
    python benchmarks/startup.py --repeats 5

Every Snakemake job is a new process, so the demo's 49 jobs pay this cost 49 times; on 2 cores it is a sizeable
share of the demo's minutes. What is measured: user + system CPU time of a child process that imports the stage's
`__main__` module (argument parsing and work excluded), the minimum over --repeats (CPU time is the measure that
another process on a shared machine disturbs least). Printed per stage: seconds, the ratio to `import torch`, and
whether the stage imported torch at all (the data and media stages must not: they never run a model).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STAGES = ("moir.data", "moir.media", "moir.encoder_cache", "moir.train", "moir.train.pretrain", "moir.evaluate",
          "moir.report")


def cpu_seconds(code: str) -> tuple[float, str]:
    """CPU time (user + system) of a child process running `code`, and what it printed."""
    before = os.times()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    after = os.times()
    spent = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return spent, result.stdout.strip()


def best(code: str, repeats: int) -> tuple[float, str]:
    runs = [cpu_seconds(code) for _ in range(repeats)]
    return min(seconds for seconds, _ in runs), runs[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    floor, _ = best("import torch", args.repeats)
    print(f"{'import':<24} {'cpu s':>7} {'/ torch':>8}  torch imported")
    print(f"{'torch':<24} {floor:7.2f} {1.0:8.2f}  yes")
    for stage in STAGES:
        module = stage if stage.endswith("pretrain") else f"{stage}.__main__"
        seconds, torch_loaded = best(f"import sys, {module}; print('torch' in sys.modules)", args.repeats)
        print(f"{stage:<24} {seconds:7.2f} {seconds / floor:8.2f}  {'yes' if torch_loaded == 'True' else 'no'}")


if __name__ == "__main__":
    main()
