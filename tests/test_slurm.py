"""The pipeline on a real SLURM scheduler: the demo DAG through the SLURM profile, and training preemption.

tests/slurm/setup_cluster.sh stands up a one-node cluster on this machine (slurmctld, slurmd, slurmdbd with
MariaDB for `sacct`, munge; loopback only; fake GPUs so that GPU jobs run on the CPU). A reduced demo DAG is
submitted through the profile users get, workflow/profiles/slurm, changed only as `cluster_profile` says: its
placeholders filled in as a user would (account, partitions, GPU type, read from the cluster), memory capped to
this node's share per core, the demo's own thread counts, short scheduler status polls. The same DAG runs locally
at the same time (the SLURM run mostly waits for status polls, so the two share the CPU well).

While the SLURM run trains, one training job is requeued (`scontrol requeue`: what PreemptMode=REQUEUE does to a
job submitted with --requeue, as the profile's `slurm-requeue` submits them) and another is cancelled (`scancel`:
Snakemake's `retries` must submit it again), each once it has written a checkpoint.

Checked: every job ran on the scheduler and the SLURM run ends with the local run's results (metrics,
predictions, tables, figures, adapter weights); both interrupted runs resumed from exactly the checkpoint they
were interrupted at and ended with the weights of the uninterrupted local run.

    tests/slurm/setup_cluster.sh          # as root; see tests/slurm/README.md
    MOIR_SLURM_TESTS=1 .venv/bin/python -m pytest tests/test_slurm.py

Without MOIR_SLURM_TESTS=1 the tests are skipped. With it, a cluster that does not answer is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars
import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow/profiles/slurm/config.yaml"
SUITE = "demo"

ENABLED = os.environ.get("MOIR_SLURM_TESTS") == "1"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not ENABLED,
        reason="needs a SLURM cluster: run tests/slurm/setup_cluster.sh (root), then set MOIR_SLURM_TESTS=1",
    ),
]

# The demo, reduced to one dataset/model pair, one placement and one k' (an FT and a MoIR run, each evaluated
# clean and under noise) and to small sizes, with a checkpoint every 2 of the 96 training steps.
REDUCED_DEMO = {
    "suite": SUITE,
    "suites": {
        SUITE: {
            "datasets": {
                "synth-image": {"synthetic": {"sizes": {"pretrain": 200, "train": 96, "val": 16, "test": 32}}},
            },
            "table1": {"pairs": [{"dataset": "synth-image", "model": "tiny-llava"}], "placements": ["attn"]},
            "table3": {"ratios": [0.1]},
            "pretrain": {"epochs": 1},
            "train": {"epochs": 2, "batch_size": 2, "checkpoint_every": 2},
        }
    },
}
# Blocks of config.yaml's demo suite that the reduced demo drops (a --configfile adds and changes keys, it cannot
# remove one): Table 5's compression arms are more train_run and evaluate jobs of the rules the grid above runs.
DROPPED = ("table5",)
# The training runs of REDUCED_DEMO that get interrupted, and how.
INTERRUPTIONS = {
    "synth-image__tiny-llava__attn__moir-k0.1__seed0": "requeue",
    "synth-image__tiny-llava__attn__ft__seed0": "cancel",
}
# What the profile leaves for the user to fill in (its header documents them).
PLACEHOLDERS = ("YOUR_ACCOUNT", "YOUR_PARTITION", "YOUR_GPU_PARTITION", "YOUR_GPU_TYPE")
RUN_TIMEOUT_S = 480
COPIED = ("workflow", "moir", "envs")  # and config.yaml, less DROPPED


# ------------------------------------------------------------------------------------------------ the cluster


@dataclass(frozen=True)
class Cluster:
    partition: str
    account: str
    gpu_type: str
    cpus: int
    memory_mb: int


def _command(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def _cluster() -> Cluster:
    """What the running cluster offers: its default partition, root's default account, the node's GPU type."""
    if "UP" not in _command("scontrol", "ping"):
        raise RuntimeError("slurmctld is not up (scontrol ping)")
    lines = _command("sinfo", "-h", "-o", "%P|%c|%m|%G|%T").splitlines()
    default = next((line for line in lines if line.split("|")[0].endswith("*")), lines[0] if lines else "")
    partition, cpus, memory, gres, state = default.split("|")
    if state not in ("idle", "mixed", "allocated"):
        raise RuntimeError(f"the node of partition {partition} is {state}")
    gpu = re.match(r"gpu:([^:(,]+):\d+", gres)
    if gpu is None:
        raise RuntimeError(f"the node has no typed gpu GRES (sinfo %G: {gres!r}); see tests/slurm/setup_cluster.sh")
    account = _command("sacctmgr", "-n", "-P", "list", "user", "root", "format=defaultaccount")
    if not account:
        raise RuntimeError("root has no default account (sacctmgr list user root)")
    return Cluster(partition.rstrip("*"), account, gpu.group(1), int(cpus), int(memory))


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    try:
        return _cluster()
    except subprocess.CalledProcessError as error:
        problem = f"`{' '.join(error.cmd)}` failed: {(error.stdout + error.stderr).strip()}"
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as error:
        problem = str(error)
    pytest.fail(f"MOIR_SLURM_TESTS=1 but the SLURM cluster does not answer: {problem}\n"
                "start it with tests/slurm/setup_cluster.sh (as root)", pytrace=False)


def cluster_profile(profile: dict, cluster: Cluster) -> dict:
    """The user's profile as a user of this cluster would fill it in, fitted to its one small node."""
    text = yaml.safe_dump(profile)
    missing = [name for name in PLACEHOLDERS if name not in text]
    assert not missing, f"{PROFILE} no longer has the placeholders {missing}: update this test and docs/slurm.md"
    for name, value in (("YOUR_GPU_PARTITION", cluster.partition), ("YOUR_PARTITION", cluster.partition),
                        ("YOUR_ACCOUNT", cluster.account), ("YOUR_GPU_TYPE", cluster.gpu_type)):
        text = text.replace(name, value)
    fitted = yaml.safe_load(text)
    # Memory: the profile sizes jobs for H100 nodes; here every job gets at most one core's share of the node.
    per_core_mb = cluster.memory_mb // cluster.cpus
    for resources in [fitted["default-resources"], *fitted.get("set-resources", {}).values()]:
        if "mem_mb" in resources:
            resources["mem_mb"] = min(resources["mem_mb"], per_core_mb)
    # Threads: the demo's own (as in the local run it is compared with), not the profile's 8-core jobs.
    fitted.pop("set-threads", None)
    # Status polls: the plugin waits 40 s before the first and 10 s more after each poll that sees no job end.
    fitted["slurm-init-seconds-before-status-checks"] = 4
    fitted["seconds-between-status-checks"] = 4
    return fitted


# ------------------------------------------------------------------------------------------------ the two runs


def _workspace(root: Path) -> Path:
    """A copy of the workflow and package: the runs write results/, data/ and logs/ there, not in the checkout."""
    root.mkdir(parents=True)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for key in DROPPED:
        assert key in config["suites"][SUITE], f"config.yaml's suites.{SUITE} has no {key}: update DROPPED"
        del config["suites"][SUITE][key]
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    (root / "reduced.yaml").write_text(yaml.safe_dump(REDUCED_DEMO, sort_keys=False))
    return root


def _environment() -> dict:
    """The venv's python first on PATH: rules call `python -m moir.<stage>`, in SLURM jobs too (sbatch exports
    the submitting environment)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _start(workspace: Path, *options: str) -> subprocess.Popen:
    snakemake = Path(sys.executable).parent / "snakemake"
    with open(workspace / "snakemake.out", "w") as log:
        return subprocess.Popen([str(snakemake), "--configfile", "reduced.yaml", *options], cwd=workspace,
                                env=_environment(), stdout=log, stderr=subprocess.STDOUT)


@dataclass
class Interruption:
    run: str
    action: str  # "requeue" | "cancel"
    jobid: str
    step: int  # of the newest checkpoint when the job was interrupted


@dataclass
class Runs:
    local: Path
    slurm: Path
    started: str  # when the runs started, for sacct --starttime
    interruptions: list[Interruption] = field(default_factory=list)

    def slurm_log(self) -> str:
        return (self.slurm / "snakemake.out").read_text()

    def slurm_jobs(self) -> dict[tuple[str, str], str]:
        """(job id, final state) -> job comment, of every SLURM job of the run (sacct: what slurmdbd recorded)."""
        run_id = re.search(r"SLURM run ID: (\S+)", self.slurm_log()).group(1)
        lines = _command("sacct", "-X", "-n", "-P", "--name", run_id, "--starttime", self.started,
                         "-o", "JobID,State,Comment").splitlines()
        return {tuple(line.split("|")[:2]): line.split("|", 2)[2] for line in lines}


def _running_training_jobs() -> dict[str, str]:
    """Run name -> SLURM job id of the running train_run jobs (the plugin's --comment names rule and wildcards)."""
    jobs = {}
    for line in _command("squeue", "-h", "-t", "RUNNING", "-o", "%A|%k").splitlines():
        jobid, comment = line.split("|", 1)
        if comment.startswith("rule_train_run_wildcards_"):
            jobs[comment.removeprefix("rule_train_run_wildcards_")] = jobid
    return jobs


def _training_process(workspace: Path, run: str) -> int | None:
    """The pid of the `python -m moir.train` of `run` that runs in `workspace` (not the local run's twin)."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"moir.train" in command and f"runs/{run}".encode() in b" ".join(command) \
                    and (proc / "cwd").resolve() == workspace.resolve():
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def interrupt_training(workspace: Path, process: subprocess.Popen, plan: dict[str, str]) -> list[Interruption]:
    """Requeue or cancel each planned training job once it runs and has written a checkpoint.

    Slurm sends SIGTERM only to the processes srun started (here the job's Snakemake, which waits for its
    shell command) and kills the rest of the step, the training, with SIGKILL seconds later. The demo's training
    would finish in that time, so it is stopped (SIGSTOP) at the checkpoint first: the kill then lands mid-run,
    as a preemption does on a real run, and the run must resume from exactly that checkpoint."""
    done, pending = [], dict(plan)
    while pending and process.poll() is None:
        for run, action in list(pending.items()):
            checkpoints = workspace / f"results/{SUITE}/checkpoints/{run}"
            pid = _training_process(workspace, run)
            if pid is None or not any(checkpoints.glob("step-*.pt")):
                continue
            os.kill(pid, signal.SIGSTOP)
            newest = max(checkpoints.glob("step-*.pt"))
            jobid = _running_training_jobs()[run]
            _command(*(("scontrol", "requeue", jobid) if action == "requeue" else ("scancel", jobid)))
            done.append(Interruption(run, action, jobid, int(newest.stem.removeprefix("step-"))))
            del pending[run]
        time.sleep(0.05)
    return done


def _wait(process: subprocess.Popen, workspace: Path, deadline: float) -> None:
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    output = (workspace / "snakemake.out").read_text()
    assert process.returncode == 0, f"snakemake in {workspace} failed ({process.returncode}):\n{output[-6000:]}"


@pytest.fixture(scope="module")
def runs(cluster: Cluster, tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("slurm")
    local, slurm = _workspace(root / "local"), _workspace(root / "slurm")
    profile_dir = root / "profile"
    profile_dir.mkdir()
    profile = cluster_profile(yaml.safe_load(PROFILE.read_text()), cluster)
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    slurm_process = _start(slurm, "--workflow-profile", str(profile_dir))
    local_process = _start(local, "--cores", str(cluster.cpus))
    result = Runs(local, slurm, started)
    try:
        result.interruptions = interrupt_training(slurm, slurm_process, INTERRUPTIONS)
        _wait(local_process, local, deadline)
        _wait(slurm_process, slurm, deadline)
    finally:
        for process in (slurm_process, local_process):
            if process.poll() is None:
                process.kill()
                process.wait()
        run_id = re.search(r"SLURM run ID: (\S+)", (slurm / "snakemake.out").read_text())
        if run_id:  # a failed or killed run leaves no job behind
            subprocess.run(["scancel", "--name", run_id.group(1)], check=False)
    return result


# ------------------------------------------------------------------------------------------------ comparisons


def assert_same_weights(local: Path, slurm: Path) -> None:
    files = sorted(path.relative_to(local) for path in local.rglob("*.safetensors"))
    assert files, f"no weights under {local}"
    for name in files:
        expected, actual = load_file(local / name), load_file(slurm / name)
        assert expected.keys() == actual.keys(), name
        different = [key for key in expected if not (expected[key] == actual[key]).all()]
        assert not different, f"{name}: tensors differ between the local and the SLURM run: {different}"


def _result_files(workspace: Path) -> list[Path]:
    results = workspace / "results" / SUITE
    found = [*results.glob("eval/*/*/*.json"), *results.glob("eval/*/*/*.parquet"), *results.glob("report/*")]
    return sorted(path.relative_to(workspace) for path in found)


def _measured(metrics: dict) -> dict:
    """Metrics without the evaluation's wall time (the one value that depends on when and where it ran)."""
    return {**metrics, "environment": {k: v for k, v in metrics["environment"].items() if k != "wall_time_s"}}


def assert_same_result(local: Path, slurm: Path) -> None:
    if local.suffix == ".json":
        assert _measured(json.loads(slurm.read_text())) == _measured(json.loads(local.read_text())), local
    elif local.suffix == ".parquet":
        assert polars.read_parquet(slurm).equals(polars.read_parquet(local)), local
    else:  # tables, figures and the report
        assert slurm.read_bytes() == local.read_bytes(), local


def _sacct_states(jobid: str) -> list[str]:
    """Every state one job id went through, oldest first (a requeued job keeps its id: --duplicates)."""
    return _command("sacct", "-j", jobid, "-X", "-n", "-P", "--duplicates", "-o", "State").splitlines()


# ------------------------------------------------------------------------------------------------ the tests


def test_demo_dag_through_the_slurm_profile_gives_the_local_results(runs: Runs):
    # The scheduler ran every job of the DAG but `all` (the plugin's job comment names the rule), and all of them
    # ended COMPLETED but the one the test cancelled.
    local_rules = set(re.findall(r"^localrule (\w+):", (runs.local / "snakemake.out").read_text(), re.M))
    jobs = runs.slurm_jobs()
    assert {comment.split("_wildcards_")[0].removeprefix("rule_") for comment in jobs.values()} == local_rules - {"all"}
    cancelled = {i.jobid for i in runs.interruptions if i.action == "cancel"}
    assert all(state == "COMPLETED" for jobid, state in jobs if jobid not in cancelled), jobs

    local_files, slurm_files = _result_files(runs.local), _result_files(runs.slurm)
    assert local_files, "the local run wrote no metrics or tables"
    assert slurm_files == local_files
    for name in local_files:
        assert_same_result(runs.local / name, runs.slurm / name)
    assert_same_weights(runs.local / "results" / SUITE / "runs", runs.slurm / "results" / SUITE / "runs")


@pytest.mark.parametrize("action", ["requeue", "cancel"])
def test_interrupted_training_resumes_from_its_checkpoint(runs: Runs, action: str):
    interruption = next((i for i in runs.interruptions if i.action == action), None)
    assert interruption is not None, (
        f"no training job could be interrupted ({action}) while it ran with a checkpoint: {runs.interruptions}")
    run = interruption.run
    attempts = sorted((int(jobid), state) for (jobid, state), comment in runs.slurm_jobs().items()
                      if comment == f"rule_train_run_wildcards_{run}")
    if action == "requeue":  # one job, that ran twice
        assert [jobid for jobid, _ in attempts] == [int(interruption.jobid)], attempts
        assert _sacct_states(interruption.jobid) == ["REQUEUED", "COMPLETED"]
    else:  # a cancelled job, and the job Snakemake's `retries` submitted after it
        assert len(attempts) == 2 and attempts[0][0] == int(interruption.jobid), attempts
        assert attempts[0][1].startswith("CANCELLED") and attempts[1][1] == "COMPLETED", attempts

    checkpoint = f"results/{SUITE}/checkpoints/{run}/step-{interruption.step:08d}.pt"
    train_log = (runs.slurm / f"logs/{SUITE}/train/{run}.log").read_text()
    assert f"resumed from {checkpoint}" in train_log, train_log[-3000:]
    card = json.loads((runs.slurm / f"results/{SUITE}/runs/{run}/run_card.json").read_text())
    assert card["resumed_from_steps"] == [interruption.step], card["resumed_from_steps"]
    assert_same_weights(runs.local / f"results/{SUITE}/runs/{run}", runs.slurm / f"results/{SUITE}/runs/{run}")
