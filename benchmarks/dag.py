"""How long Snakemake takes to plan: the paper suite's whole DAG (a dry run) and a no-op run of a finished demo.

Both must take a few seconds: they are what a researcher waits for before every submission and after every edit.
Each figure is the median wall time of --repeat runs of a `snakemake` process, beside the same process doing no
work (`snakemake --version`: Python, Snakemake and its plugins starting), so the ratio shows what the DAG adds.

    python benchmarks/dag.py                      # a temporary copy of the repository
    python benchmarks/dag.py --demo-dir .         # the no-op run on your checkout, after a real demo run

Without --demo-dir the finished demo is made the way tests/test_workflow.py makes it: every output of the demo
DAG created empty, then `snakemake --touch --forceall` records each job's provenance as a real run does, so
Snakemake checks exactly what it checks after a real run (times, provenance, checksums of changed inputs).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIRECTORY_OUTPUTS = {"synthesize_data": 0, "pretrain_base": 0, "train_run": 0}


def snakemake(cwd: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def timed(cwd: Path, args: list[str], repeat: int) -> float:
    """Median wall time of `snakemake <args>` in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        snakemake(cwd, *args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_repository(dest: Path) -> Path:
    shutil.copy2(REPO / "config.yaml", dest / "config.yaml")
    for name in ("workflow", "moir", "envs"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def finish_demo(workdir: Path) -> int:
    """Create every output of the demo DAG and record its provenance; returns the number of jobs."""
    output = snakemake(workdir, "--dry-run", "--cores", "2", "--config", "suite=demo")
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        outputs = re.search(r"^\s+output: (.*)$", block, re.MULTILINE)
        if rule is None or outputs is None:
            continue
        for index, path in enumerate(outputs.group(1).split(", ")):
            path = workdir / path
            if DIRECTORY_OUTPUTS.get(rule.group(1)) == index:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    touched = snakemake(workdir, "--touch", "--forceall", "--cores", "1", "--config", "suite=demo")
    return int(re.search(r"(\d+) of \1 steps \(100%\) done", touched).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (the median is printed)")
    parser.add_argument("--demo-dir", type=Path, help="a checkout with a finished demo (default: a made-up one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="moir-dag-") as tmp:
        workdir = copy_repository(Path(tmp))
        paper_jobs = int(re.search(r"^total\s+(\d+)$", snakemake(
            workdir, "--dry-run", "--config", "suite=paper"), re.MULTILINE).group(1))
        if args.demo_dir is None:
            demo_dir, demo_jobs = workdir, finish_demo(workdir)
        else:
            demo_dir, demo_jobs = args.demo_dir.resolve(), None
        pending = snakemake(demo_dir, "--dry-run", "--config", "suite=demo")
        if "Nothing to be done" not in pending:
            raise SystemExit(f"the demo in {demo_dir} is not finished (snakemake --dry-run):\n{pending}")

        startup = timed(workdir, ["--version"], args.repeat)
        paper = timed(workdir, ["--dry-run", "--config", "suite=paper"], args.repeat)
        paper_slurm = timed(workdir, ["--dry-run", "--workflow-profile", "workflow/profiles/slurm",
                                      "--config", "suite=paper"], args.repeat)
        demo = timed(demo_dir, ["--cores", "2", "--config", "suite=demo"], args.repeat)

    jobs = f"{demo_jobs} jobs" if demo_jobs else str(demo_dir)
    rows = [
        ("snakemake --version (startup only)", startup),
        (f"paper suite DAG, dry run ({paper_jobs} jobs)", paper),
        ("paper suite DAG, dry run, SLURM profile", paper_slurm),
        (f"finished demo, no-op run ({jobs})", demo),
    ]
    print(f"median of {args.repeat} runs, wall time of one snakemake process")
    for label, seconds in rows:
        print(f"  {label:<48} {seconds:6.2f} s   {seconds / startup:4.1f}x startup")


if __name__ == "__main__":
    main()
