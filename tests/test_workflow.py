"""The Snakemake workflow, by dry runs: the paper suite's whole DAG through the SLURM profile (offline), and on a
finished demo DAG, that each config or code change reruns exactly the jobs it affects. Plus `snakemake --lint`,
snakefmt, the rules' directives and the conda environment file.

The finished demo DAG is made without running the stages: every output the dry run lists is created empty, then
`snakemake --touch --forceall` records each job's provenance (params, input, code) as a real run does. What these
tests check is Snakemake's rerun decision, which looks only at that provenance and the files' times.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from moir import plan
from moir.settings import parse

REPO = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
GPU_RULES = {"transcribe_audio", "dump_encoder_cache", "pretrain_base", "train_run", "evaluate", "predict",
             "vision_split"}
# Outputs declared with directory(), by rule: their position in the rule's output list.
DIRECTORY_OUTPUTS = {"synthesize_data": 0, "pretrain_base": 0, "train_run": 0}


def copy_repository(dest: Path) -> Path:
    """What the workflow reads (config, workflow, the moir sources, envs) in a fresh directory."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy2(REPO / "config.yaml", dest / "config.yaml")
    for name in ("workflow", "moir", "envs"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest


def snakemake(cwd: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def dry_run(cwd: Path, *args: str) -> str:
    return snakemake(cwd, "--dry-run", "--cores", "2", *args)


def job_counts(output: str) -> dict[str, int]:
    """Rule -> number of jobs, from a dry run's "Job stats" table ({} when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE))
    counts.pop("total")
    return {rule: int(count) for rule, count in counts.items()}


def jobs(output: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(rule, {"output": ..., "resources": ..., "wildcards": ...}) of every job a dry run lists."""
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        match = re.match(r"(?:local)?rule (\w+):", block)
        if match:
            fields = dict(re.findall(r"^\s+(\w+): (.*)$", block, re.MULTILINE))
            yield match.group(1), fields


def set_config(workdir: Path, edit) -> None:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    edit(config)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """planned(suite): `snakemake --dry-run --printshellcmds` of that suite in a fresh copy of the repository, run
    once for the tests that only read its output (the jobs, their files and shell commands)."""
    workdir = copy_repository(tmp_path_factory.mktemp("planned"))
    outputs = {}

    def output(suite: str) -> str:
        if suite not in outputs:
            outputs[suite] = dry_run(workdir, "--printshellcmds", "--config", f"suite={suite}")
        return outputs[suite]

    return output


# ------------------------------------------------------------------------------------- the paper suite on SLURM


def test_paper_suite_builds_its_whole_dag_through_the_slurm_profile(tmp_path):
    workdir = copy_repository(tmp_path)
    output = dry_run(workdir, "--workflow-profile", "workflow/profiles/slurm", "--config", "suite=paper")
    assert job_counts(output) == {
        "download_data": 3, "convert_data": 2, "convert_vizwiz": 1,   # ScienceQA, MMBench-Video; VizWiz
        "fetch_models": 4,          # LLaVA-1.5 7B and 13B, Qwen2.5-VL, Whisper (the ASR model): one lock each
        "vision_tower_check": 1,    # does the 13B's CLIP tower equal the 7B's? (then it links the 7B's caches)
        "extract_media": 3, "transcribe_audio": 3,          # MMBench-Video train/val/test (V+A+T)
        # 3 splits x (ScienceQA 7B, ScienceQA 13B, MMBench-Video) + VizWiz train/val_heldout/val (7B)
        "dump_encoder_cache": 12,
        # Table 1: 4 pairs x 3 placements x {FT, MoIR}; Table 3 adds k'=0.05 and 0.15; Table 5 adds 2 keep ratios
        # x {FT, MoIR} with visual-token compression
        "train_run": 26 + 4,
        # the 4 base models and the 30 runs (clean), Table 2's 2 runs (noise), Table 5's 2 compressed bases;
        # MMBench-Video's 7 clean evaluations (base and 6 runs) are `predict` (GPU), then `judge` (CPU; the base's
        # too: Table 1 shows its accuracy)
        "evaluate": 4 + 30 + 2 + 2 - 7, "predict": 7, "judge": 7,
        "vision_split": 1,
        "report": 1, "all": 1,
    }
    listed = list(jobs(output))
    runs = {fields["wildcards"].removeprefix("run=") for rule, fields in listed if rule == "train_run"}
    assert {"vizwiz__llava-1.5-7b__attn__moir-k0.05__seed0", "vizwiz__llava-1.5-7b__attn__moir-k0.15__seed0",
            "mmbench_video__qwen2.5-vl__proj__ft__seed0", "scienceqa__llava-1.5-13b__mlp__moir-k0.1__seed0"} <= runs
    for rule, fields in listed:
        resources = dict(item.split("=", 1) for item in fields["resources"].split(", "))
        if rule == "all":
            continue
        assert resources["slurm_account"] == "YOUR_ACCOUNT", rule
        if rule in GPU_RULES:
            assert (resources["gpu"], resources["gpu_model"]) == ("1", "YOUR_GPU_TYPE"), rule
            assert resources["slurm_partition"] == "YOUR_GPU_PARTITION", rule
        else:
            assert "gpu_model" not in resources and resources.get("gpu", "0") == "0", rule
        if rule in ("train_run", "evaluate", "predict", "vision_split"):  # sized per job from moir.resources
            assert 30 <= int(resources["runtime"]) <= 12 * 60 and 16000 <= int(resources["mem_mb"]) <= 128000, rule
    limits = sum(int(dict(item.split("=", 1) for item in fields["resources"].split(", "))["runtime"])
                 for rule, fields in listed if rule in ("train_run", "evaluate", "predict", "vision_split")) / 60
    assert 90 < limits < 200, limits  # GPU-hours of limits: about the ~90 expected with margin, not ~960
    assert "data/raw/vizwiz/download.complete.json" in output


def test_paper_suite_fetches_every_hub_model_before_the_gpu_stages_and_judges_on_a_cpu(planned):
    output = planned("paper")
    listed = list(jobs(output))
    locks = {fields["output"] for rule, fields in listed if rule == "fetch_models"}
    assert locks == {f"data/models/{name}.lock.json" for name in ("llava-1.5-7b", "llava-1.5-13b", "qwen2.5-vl", "asr")}
    for rule, fields in listed:  # every stage that loads a hub model waits for its lock
        if rule in GPU_RULES:
            assert any(lock in fields["input"] for lock in locks), (rule, fields["input"])
    commands = re.findall(r"^Shell command: (.*)$", output, re.MULTILINE)
    gpu_commands = [c for c in commands if c.startswith(("python -m moir.train ", "python -m moir.evaluate ",
                                                         "python -m moir.encoder_cache ", "python -m moir.media transcribe"))]
    assert gpu_commands and all("--hub-lock data/models/" in c and '"hub_name":' in c for c in gpu_commands)
    # the judge: its own CPU rule after `predict`; the GPU job defers it and carries none of its settings
    predicts = [c for c in commands if "/predict --settings" in c]
    assert len(predicts) == 7 and all('"judge":"defer"' in c and "judge_url" not in c for c in predicts)
    judges = [c for c in commands if c.startswith("python -m moir.evaluate.judge_stage ")]
    assert len(judges) == 7 and all('"workers":8' in c and '"max_failed_share":0.02' in c for c in judges)
    # the 13B's caches: linked from the 7B's when vision_tower_check finds the same tower, else dumped
    dump_13b = [c for c in commands if c.startswith("python -m moir.encoder_cache ") and "/llava-1.5-13b " in c]
    assert len(dump_13b) == 3 and all("--tower-check data/models/llava-1.5-13b.vision_tower.json" in c
                                      and "--reuse data/cache/scienceqa/" in c for c in dump_13b)
    # the paper settings reach their stages
    qwen_train = next(c for c in commands if c.startswith("python -m moir.train ") and "qwen2.5-vl" in c)
    for setting in ('"pixel_budget":{"image_max_pixels":802816', '"transcript_max_tokens":512',
                    '"group_by_length":true', '"checkpoint_every_n_layers":1'):
        assert setting in qwen_train, setting
    assert any('"checkpoint_every_n_layers":2' in c for c in commands if "llava-1.5-7b-hf" in c)
    assert any('"shard_bytes":2147483648' in c and '"shard_size":null' in c for c in commands)
    reports = [c for c in commands if c.startswith("python -m moir.report ")]  # the job `all` waits for
    assert len(reports) == 1 and '"reference_tables":"moir/reference/paper_tables.csv"' in reports[0]


# ------------------------------------------------------------------------------------- rerun only what changed


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory, planned) -> Path:
    """A copy of the repository whose demo DAG is complete (empty outputs, real provenance records)."""
    workdir = copy_repository(tmp_path_factory.mktemp("demo"))
    output = planned("demo")
    assert job_counts(output) == {
        "synthesize_data": 2, "extract_media": 4, "pretrain_base": 2, "dump_encoder_cache": 6, "train_run": 15,
        # the bases, the runs, Table 2's noise evaluations, Table 5's compressed base
        "evaluate": 2 + 15 + 2 + 1, "vision_split": 1, "report": 1, "all": 1,   # 52 jobs
    }
    for rule, fields in jobs(output):
        for index, path in enumerate(fields.get("output", "").split(", ") if "output" in fields else []):
            path = workdir / path
            if DIRECTORY_OUTPUTS.get(rule) == index:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    snakemake(workdir, "--touch", "--forceall", "--cores", "1", "--config", "suite=demo")
    return workdir


@pytest.fixture
def demo(finished_demo) -> Iterator[Path]:
    """The finished demo; config.yaml and the moir sources are restored (content and time) after each test."""
    files = [finished_demo / "config.yaml", *(finished_demo / "moir").rglob("*.py")]
    saved = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files}
    yield finished_demo
    for path, (content, mtime) in saved.items():
        path.write_bytes(content)
        os.utime(path, ns=(mtime, mtime))


def demo_jobs(workdir: Path) -> dict[str, int]:
    return job_counts(dry_run(workdir, "--config", "suite=demo"))


EVALUATIONS = {"evaluate": 20, "vision_split": 1}
# 6 of Table 1 (one of them also Table 2's), Table 3's k'=0.05, Table 5's MoIR with compression
MOIR_RUNS = 8


def test_a_finished_dag_is_a_no_op(demo):
    assert demo_jobs(demo) == {}


def test_reordering_yaml_keys_reruns_nothing(demo):
    def reverse(node):
        return {key: reverse(node[key]) for key in reversed(list(node))} if isinstance(node, dict) else node

    config = yaml.safe_load((demo / "config.yaml").read_text())
    (demo / "config.yaml").write_text(yaml.safe_dump(reverse(config), sort_keys=False))
    assert demo_jobs(demo) == {}


def test_changing_k_reruns_only_the_moir_runs_with_that_k(demo):
    def ablate_0_2(config):
        config["suites"]["demo"]["table3"]["ratios"] = [0.05, 0.1, 0.2]

    set_config(demo, ablate_0_2)
    output = dry_run(demo, "--config", "suite=demo")
    assert job_counts(output) == {"train_run": 1, "evaluate": 1, "report": 1, "all": 1}
    assert "run=synth-image__tiny-llava__attn__moir-k0.2__seed0" in output


def test_changing_the_main_k_reruns_the_moir_arms_of_tables_1_and_2(demo):
    def main_ratio(config):
        config["suites"]["demo"]["table1"]["ratio"] = 0.2

    set_config(demo, main_ratio)
    output = dry_run(demo, "--config", "suite=demo")
    # Table 1's 6 MoIR arms (one also Table 2's: its noise evaluation) and Table 5's MoIR arm with compression
    assert job_counts(output) == {"train_run": 7, "evaluate": 7 + 1, "report": 1, "all": 1}
    trained = [fields["wildcards"] for rule, fields in jobs(output) if rule == "train_run"]
    assert all("__moir-k0.2__" in run or "__moir-k0.2+keep" in run for run in trained)


def test_changing_a_router_setting_reruns_moir_runs_and_no_ft_run(demo):
    def attend(config):
        config["router"]["align"] = "attend"

    set_config(demo, attend)
    # the 8 MoIR runs, their clean evaluations and Table 2's noise evaluation
    assert demo_jobs(demo) == {"train_run": MOIR_RUNS, "evaluate": MOIR_RUNS + 1, "report": 1, "all": 1}


def test_changing_an_evaluation_setting_reruns_no_training(demo):
    def smaller_batches(config):
        config["suites"]["demo"]["evaluate"]["batch_size"] = 4

    set_config(demo, smaller_batches)
    assert demo_jobs(demo) == {**EVALUATIONS, "report": 1, "all": 1}


def test_changing_a_training_setting_reruns_runs_but_not_data_caches_or_bases(demo):
    def more_epochs(config):
        config["suites"]["demo"]["train"]["epochs"] += 1

    set_config(demo, more_epochs)
    counts = demo_jobs(demo)
    assert counts == {"train_run": 15, "evaluate": 15 + 2, "report": 1, "all": 1}


def test_changing_one_benchmarks_answer_budget_reruns_only_its_evaluations(demo):
    def longer_video_answers(config):
        config["suites"]["demo"]["datasets"]["synth-video"]["max_new_tokens"] = 32

    set_config(demo, longer_video_answers)
    # synth-video: its base and its 6 runs of Table 1; no robustness run on it
    assert demo_jobs(demo) == {"evaluate": 1 + 6, "report": 1, "all": 1}


@pytest.fixture(scope="module")
def finished_paper(tmp_path_factory, planned) -> Path:
    """A copy of the repository whose paper DAG is complete (empty outputs, real provenance records)."""
    workdir = copy_repository(tmp_path_factory.mktemp("paper"))
    for rule, fields in jobs(planned("paper")):
        for index, path in enumerate(fields["output"].split(", ") if "output" in fields else []):
            path = workdir / path
            if DIRECTORY_OUTPUTS.get(rule) == index:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    snakemake(workdir, "--touch", "--forceall", "--cores", "1", "--config", "suite=paper")
    return workdir


def paper_jobs(workdir: Path, edit) -> dict[str, int]:
    """The jobs a config edit reruns in the finished paper DAG (config.yaml restored afterwards)."""
    config = workdir / "config.yaml"
    saved = config.read_bytes(), config.stat().st_mtime_ns
    try:
        set_config(workdir, edit)
        return job_counts(dry_run(workdir, "--config", "suite=paper"))
    finally:
        config.write_bytes(saved[0])
        os.utime(config, ns=(saved[1], saved[1]))


def test_a_finished_paper_dag_is_a_no_op(finished_paper):
    assert paper_jobs(finished_paper, lambda config: None) == {}


def test_changing_a_judge_setting_reruns_only_the_judge_jobs(finished_paper):
    def more_workers(config):
        config["suites"]["paper"]["judge"]["workers"] = 16
        config["suites"]["paper"]["judge"]["max_failed_share"] = 0.05

    # MMBench-Video's 6 judged run evaluations and the report; no GPU job (predict, evaluate) reruns
    assert paper_jobs(finished_paper, more_workers) == {"judge": 7, "report": 1, "all": 1}


def test_changing_the_pixel_budget_reruns_the_qwen_caches_and_what_reads_them(finished_paper):
    def smaller_videos(config):
        config["suites"]["paper"]["models"]["qwen2.5-vl"]["pixel_budget"]["video_total_pixels"] = 512 * 28 * 28

    # MMBench-Video's 3 caches (Qwen2.5-VL), its 6 runs, its 7 evaluations (base and runs) and their judges
    assert paper_jobs(finished_paper, smaller_videos) == {
        "dump_encoder_cache": 3, "train_run": 6, "predict": 7, "judge": 7, "report": 1, "all": 1}


def test_fetching_one_more_model_reruns_no_stage(finished_paper):
    def local_judge(config):
        config["suites"]["paper"]["judge"].update(backend="local", model="Qwen/Qwen2.5-7B-Instruct")

    # the judge model is fetched and locked on its own; the judges rerun with it, the GPU stages do not
    assert paper_jobs(finished_paper, local_judge) == {"fetch_models": 1, "judge": 7, "report": 1, "all": 1}


def test_changing_the_other_suite_reruns_nothing(demo):
    def paper_epochs(config):
        config["suites"]["paper"]["train"]["epochs"] = 3

    set_config(demo, paper_epochs)
    assert demo_jobs(demo) == {}


def edit(path: Path, text: str = "\nEDITED_BY_TEST = 1\n") -> None:
    """A code change (by default one that changes the syntax tree: a new module constant)."""
    path.write_text(path.read_text() + text)
    later = time.time_ns() + 10**9
    os.utime(path, ns=(later, later))


def test_touching_a_source_file_reruns_nothing(demo):
    later = time.time_ns() + 10**9
    os.utime(demo / "moir" / "router.py", ns=(later, later))
    assert demo_jobs(demo) == {}


def test_a_comment_or_docstring_change_reruns_nothing(demo):
    edit(demo / "moir" / "router.py", "\n# a comment\n")
    router = demo / "moir" / "router.py"
    router.write_text(router.read_text().replace('"""MoIR: the Multi-modal Information Router', '"""MoIR, reworded', 1))
    edit(demo / "moir" / "metrics" / "rank.py", "\n# another comment\n")
    assert demo_jobs(demo) == {}


def test_a_router_change_reruns_exactly_the_moir_runs_and_what_follows(demo):
    edit(demo / "moir" / "router.py")
    output = dry_run(demo, "--config", "suite=demo")
    # the MoIR runs, their clean evaluations, Table 2's noise evaluation, the report: no FT run, no base, no cache
    assert job_counts(output) == {"train_run": MOIR_RUNS, "evaluate": MOIR_RUNS + 1, "report": 1, "all": 1}
    assert all("__moir-k" in fields["wildcards"] for rule, fields in jobs(output) if rule in ("train_run", "evaluate"))


def test_a_metric_change_reruns_evaluations_and_the_report_never_training(demo):
    edit(demo / "moir" / "metrics" / "rank.py")
    assert demo_jobs(demo) == {**EVALUATIONS, "report": 1, "all": 1}


def test_a_code_change_reruns_only_the_stages_that_run_the_code(demo):
    edit(demo / "moir" / "report" / "build.py")
    assert demo_jobs(demo) == {"report": 1, "all": 1}
    edit(demo / "moir" / "evaluate" / "judge.py")  # run by moir.evaluate only
    assert demo_jobs(demo) == {**EVALUATIONS, "report": 1, "all": 1}


def test_a_training_loop_change_reruns_training_and_not_the_data_or_caches(demo):
    edit(demo / "moir" / "train" / "finetune.py")
    assert demo_jobs(demo) == {"train_run": 15, "evaluate": 15 + 2, "report": 1, "all": 1}


def test_a_data_change_reruns_everything_downstream(demo):
    edit(demo / "moir" / "data" / "synthetic.py")
    counts = demo_jobs(demo)
    assert counts["synthesize_data"] == 2 and counts["train_run"] == 15 and counts["report"] == 1


# ------------------------------------------------------------------------------------- the code map

# What each stage's entry module is, and the modules its imports reach whose edits cannot change its outputs (with
# the reason). Every other module of the package it imports must be in moir/plan.py's CODE map for that stage.
STAGE_ENTRIES = {
    "synthesize": "moir.data.__main__", "download": "moir.data.__main__", "convert": "moir.data.__main__",
    "extract": "moir.media.__main__", "transcribe": "moir.media.__main__", "encoder_cache": "moir.encoder_cache",
    "pretrain": "moir.train.pretrain", "train": "moir.train", "evaluate": "moir.evaluate", "report": "moir.report",
    "fetch": "moir.models.fetch", "towers": "moir.models.towers", "judge": "moir.evaluate.judge_stage",
}
DATA_COMMANDS = {  # moir.data's and moir.media's commands share a __main__; each runs its own modules
    "synthesize": {"moir/data/download.py", "moir/data/scienceqa.py", "moir/data/vizwiz.py",
                   "moir/data/mmbench_video.py", "moir/data/safe_pickle.py"},
    "download": {"moir/data/synthetic.py", "moir/data/scienceqa.py", "moir/data/vizwiz.py",
                 "moir/data/mmbench_video.py", "moir/data/safe_pickle.py", "moir/train/curriculum.py"},
    "convert": {"moir/data/synthetic.py", "moir/train/curriculum.py"},  # curriculum: synth's weights parser
    "extract": {"moir/media/transcripts.py", "moir/models/fetch.py"},  # transcribe's hub lock
    "transcribe": {"moir/media/extract.py", "moir/media/frames.py", "moir/data/manifest.py"},
}
NOT_OUTPUT = {
    stage: {*DATA_COMMANDS.get(stage, ()), "moir/settings.py"}  # cli: parses --settings, checked by its own tests
    for stage in STAGE_ENTRIES
}
for stage in ("encoder_cache", "train", "evaluate", "judge"):
    NOT_OUTPUT[stage] |= {"moir/data/synthetic.py"}  # its vocabulary builds a tiny model; a saved base has its own
for stage in ("encoder_cache", "pretrain"):
    NOT_OUTPUT[stage] |= {"moir/router.py"}  # attached by training only (MoIR runs: plan.ROUTER_CODE)
NOT_OUTPUT["train"] |= {"moir/router.py"}  # ROUTER_CODE, for the MoIR runs only
NOT_OUTPUT["evaluate"] |= {"moir/router.py"}  # ROUTER_CODE, for the MoIR runs' evaluations only
# the report calls moir.metrics.stats alone; the package's __init__ imports the evaluation's metrics (and they
# moir.prompts), which the report never calls
NOT_OUTPUT["report"] |= ({str(p.relative_to(REPO)) for p in (REPO / "moir" / "metrics").glob("*.py")}
                         - {"moir/metrics/stats.py"}) | {"moir/prompts.py"}
NOT_OUTPUT["judge"] |= {"moir/router.py"}  # imported with the evaluation's code; the judge scores text only
# moir/plan.py formats the pretraining stage's phases with it; the report's outputs do not depend on it
NOT_OUTPUT["report"] |= {"moir/train/curriculum.py"}
# `python -m moir.models.fetch` / `moir.models.towers` (and moir.media's hub lock) import the moir.models package,
# whose __init__ imports the model wrappers (and they moir/compression.py); these stages use fetch.py (and
# towers.py) alone.
MODELS_PACKAGE = {str(path.relative_to(REPO)) for path in (REPO / "moir" / "models").glob("*.py")} - {
    "moir/models/fetch.py", "moir/models/towers.py"} | {"moir/compression.py"}
for stage in ("fetch", "towers", "extract", "transcribe"):
    NOT_OUTPUT[stage] |= MODELS_PACKAGE | {"moir/data/synthetic.py", "moir/data/manifest.py", "moir/runtime.py",
                                           "moir/media/pixels.py", "moir/media/frames.py", "moir/media/audio.py",
                                           "moir/media/images.py", "moir/storage.py"}


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = list(path.relative_to(REPO).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(parts + ([node.module] if node.module else []))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "moir" or name.startswith("moir.")}


def reached_files(entry: str) -> set[str]:
    """The package's files that `python -m <entry>` imports, transitively."""
    files, todo = set(), [entry, f"{entry}.__main__"]
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]))
            if path is not None and str(path.relative_to(REPO)) not in files:
                files.add(str(path.relative_to(REPO)))
                todo.extend(imported_modules(path))
    return files


def only_reexports(path: str) -> bool:
    """A package __init__ that only imports, documents and lists names (nothing it holds changes an output)."""
    tree = ast.parse((REPO / path).read_text())
    return all(isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.Expr) and isinstance(
        node.value, ast.Constant)) or (isinstance(node, ast.Assign) and all(
        isinstance(target, ast.Name) and target.id.startswith("__") for target in node.targets))
        for node in tree.body)


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRIES))
def test_the_code_map_covers_every_module_a_stage_runs(stage):
    mapped = set(plan.code_files(stage, router=True))
    unmapped = {path for path in reached_files(STAGE_ENTRIES[stage]) - mapped - NOT_OUTPUT[stage]
                if not (path.endswith("__init__.py") and only_reexports(path))}
    assert not unmapped, f"{stage}: add to moir/plan.py CODE (or to NOT_OUTPUT here, with the reason): {unmapped}"


def test_the_code_map_keeps_stages_apart():
    assert "moir/router.py" not in plan.code_files("train") and "moir/router.py" in plan.code_files("train", router=True)
    for stage in ("synthesize", "extract", "encoder_cache", "pretrain", "train"):
        files = plan.code_files(stage, router=True)
        assert not [f for f in files if f.startswith(("moir/metrics/", "moir/report/", "moir/evaluate/"))], stage
    assert any(f.startswith("moir/metrics/") for f in plan.code_files("evaluate"))


def test_a_fingerprint_ignores_comments_and_docstrings_only(tmp_path, monkeypatch):
    module = tmp_path / "moir" / "m.py"
    module.parent.mkdir()
    monkeypatch.setattr(plan, "REPO", tmp_path)

    def digest(text):
        module.write_text(text)
        plan.source_digest.cache_clear()
        return plan.source_digest("moir/m.py")

    original = digest('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # one\n')
    assert digest('"""Other doc."""\n\n\ndef f(x):\n    # a comment\n    return x + 1\n') == original
    assert digest('"""Doc."""\n\ndef f(x):\n    return x + 2\n') != original
    assert digest('"""Doc."""\n\ndef f(y):\n    return y + 1\n') != original
    plan.source_digest.cache_clear()


# ------------------------------------------------------------------------------------- the workflow's code


def shell_commands(output: str) -> list[str]:
    return [command for command in re.findall(r"^Shell command: (.*)$", output, re.MULTILINE) if command != "None"]


def option_types(parser: argparse.ArgumentParser) -> dict:
    """{dest: type} of every option of `parser` and of its subcommands' parsers."""
    types = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                types.update(option_types(sub))
        else:
            types[action.dest] = action.type
    return types


@pytest.mark.parametrize("suite", ["demo", "paper", "study"])
def test_every_command_is_accepted_by_its_stage_cli(planned, suite):
    """Each job's `python -m moir.<stage> ...` parses with that stage's own argparse parser (flags, choices,
    required arguments), so a CLI change that the rules do not follow fails here, not hours into a run."""
    commands = shell_commands(planned(suite))
    stages = set()
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == ["python", "-m"] and words[-2] == "2>", command
        stage, args = words[2], words[3:-2]
        stages.add(stage)
        module = importlib.import_module(stage)
        if hasattr(module, "__path__"):  # a package: `python -m` runs its __main__
            module = importlib.import_module(f"{stage}.__main__")
        parser = module.build_parser()
        try:
            if stage == "moir.report":  # its settings are one object: moir.plan.ReportSettings
                parsed = parser.parse_args(args)
                module.read_settings(parsed.settings)
                continue
            parsed = parse(parser, args)  # what the stage's main does: options, then --settings
        except SystemExit as error:
            pytest.fail(f"{stage} rejects the arguments of `{command}` (exit {error.code})")
        settings = json.loads(args[args.index("--settings") + 1]) if "--settings" in args else {}  # download: none
        types = option_types(parser)
        for key, value in settings.items():  # every setting reached the option of that name (through its type,
            convert = types.get(key)  # e.g. "direction=2" -> {"direction": 2.0})
            expected = convert(value) if isinstance(value, str) and callable(convert) and convert is not str else value
            assert getattr(parsed, key) == expected, (command, key)
        if stage in ("moir.encoder_cache", "moir.train", "moir.evaluate") and "--reuse" not in args:
            # hub models pinned, local bases not
            assert parsed.revision == ("main" if suite == "paper" else None), command
    expected = {"moir.data", "moir.media", "moir.encoder_cache", "moir.train", "moir.evaluate", "moir.report"}
    paper = {"moir.models.fetch", "moir.models.towers", "moir.evaluate.judge_stage"}
    assert stages == expected | ({"moir.train.pretrain"} if suite in ("demo", "study") else paper)


def test_the_html_report_opens_on_the_results(finished_demo, tmp_path):
    """`snakemake --report`: one category, "Results" (tables, figures, the page, in that order), and a landing page
    (workflow/report/workflow.rst) that links every table and figure before it describes the pipeline."""
    html = tmp_path / "report.html"
    snakemake(finished_demo, "--report", str(html), "--config", "suite=demo")
    text = html.read_text()
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", text, re.DOTALL).group(1))
    assert list(categories) == ["Results"]
    assert sorted(categories["Results"]) == ["1. Tables", "2. Figures", "3. All on one page"]
    description = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", text, re.DOTALL).group(1))
    named = re.findall(r"javascript:app\.showResultInfo\('results/demo/report/([\w.]+)'\)", description)
    assert named[:4] == ["table1.csv", "table2.csv", "table3.csv", "mdi_aei.png"], description
    assert {f"{figure}.png" for figure in plan.Plan.REPORT_FIGURES} | {"report.md"} <= set(named)
    assert description.index("table1.csv") < description.index("The pipeline")
    assert "System Message" not in description  # every link resolved, the rst rendered cleanly


def test_snakemake_lint_passes():
    output = snakemake(REPO, "--lint", "--config", "suite=demo")
    assert "Congratulations, your workflow is in a good condition!" in output


def test_snakefiles_are_formatted_with_snakefmt():
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--line-length", "120", "workflow"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def rules(text: str) -> dict[str, str]:
    return {match.group(1): body for match, body in zip(
        re.finditer(r"^rule (\w+):", text, re.MULTILINE), re.split(r"^rule \w+:", text, flags=re.MULTILINE)[1:])}


def test_every_rule_has_log_benchmark_threads_resources_and_conda():
    seen = set()
    for path in RULE_FILES:
        for name, body in rules(path.read_text()).items():
            seen.add(name)
            for directive in ("log:", "benchmark:", "threads:", "resources:", "conda:"):
                assert f"\n    {directive}" in body, f"{path.name}: rule {name} has no {directive}"
            assert "mem_mb=" in body and "runtime=" in body, name
            assert ("gpu=GPU" in body) == (name in GPU_RULES), f"rule {name}: GPU request"
            assert "\n        ENV\n" in body, name
            if "python -m moir." in body:
                assert "        code=" in body, f"rule {name} does not carry its code's fingerprint"
                assert "--settings {params.settings:q}" in body or name == "download_data", name
                # every value reaches the shell quoted
                for field in re.findall(r"\{([\w.]+)(?::q)?\}", body.split("shell:")[1]):
                    assert f"{{{field}:q}}" in body or field == "threads", f"rule {name}: {{{field}}} unquoted"
    assert GPU_RULES < seen


def test_conda_env_pins_match_pyproject_and_install_this_checkout(tmp_path):
    env = yaml.safe_load((REPO / "envs" / "moir.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert "python=3.11" in env["dependencies"]
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(entry for entry in pip if not entry.startswith("-e")) == sorted(dependencies)
    assert "-e ${MOIR_REPO}" in pip
    assert "MOIR_REPO=" in (REPO / "workflow" / "Snakefile").read_text()
    # conda hands the pip entries to pip as a requirements file, which expands ${MOIR_REPO}
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("-e ${MOIR_REPO}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation", "--no-index",
         "-r", str(requirements)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "MOIR_REPO": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Would install moir-" in result.stdout


def test_every_rule_names_the_conda_env_snakemake_resolves():
    # conda: paths in an included file are relative to that file: workflow/rules/../../envs/moir.yaml
    assert (REPO / "workflow" / "rules" / "../../envs/moir.yaml").resolve() == REPO / "envs" / "moir.yaml"
    assert 'ENV = "../../envs/moir.yaml"' in (REPO / "workflow" / "rules" / "common.smk").read_text()


def test_table4_variants_are_moir_arms_against_the_shared_ft_run_and_the_report_reads_predictions():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(suite="study", seeds=[0, 1])
    plan.validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    study = plan.Plan(config)
    arms = study.tables.table4_arms()
    assert [arm.label for arm in arms] == ["ft", "moir-k0.1+paper-literal", "moir-k0.1", "moir-k0.1+attend",
                                           "moir-k0.1+gate-lr"]
    assert arms[0] in study.tables.table1() and arms[2] in study.tables.table1()  # FT and default: Table 1's runs
    routers = {arm.variant: study.train_settings(arm.run(1).name).router for arm in arms[1:]}
    default = routers[""]
    assert (default.rms_match, default.scope, default.align, default.gate_lr_scale) == (True, "sample", "pool", 1)
    assert (routers["paper-literal"].rms_match, routers["paper-literal"].scope) == (False, "batch")
    assert routers["attend"].align == "attend" and routers["gate-lr"].gate_lr_scale == 100
    for arm in arms:  # each variant is trained and evaluated once per seed; the report reads its predictions
        for seed in (0, 1):
            assert f"{arm.run(seed).name}/clean" in study.evaluations
            assert study.report_settings().predictions[f"{arm.run(seed).name}/clean"] == study.predictions(
                f"{arm.run(seed).name}/clean")
    assert set(study.report_inputs()["predictions"]) == set(study.report_settings().predictions.values())
    config["suite"] = "demo"
    assert plan.Plan(config).tables.table4_arms() == [] and "table4" not in plan.Plan(config).tables.to_dict()
