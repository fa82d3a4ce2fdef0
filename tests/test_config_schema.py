"""config.yaml against workflow/schemas/config.schema.yaml and moir.plan's checks: the shipped config is valid, and
an unknown key, a bad value, a non-finite number or a string that could reach a process as something else is
rejected before anything runs, with a message that names the key (and only the key: never the whole config)."""

from __future__ import annotations

import copy
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moir.plan import Plan, PlanError, validate_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture
def config(shipped) -> dict:
    return copy.deepcopy(shipped)


def validate(config: dict, schema: str = SCHEMA) -> None:
    validate_config(config, schema)


def rejected(config: dict) -> str:
    """Validate and return the error text; fails the test when the config is accepted."""
    with pytest.raises(PlanError) as error:
        validate(config)
    return str(error.value)


def test_shipped_config_is_valid(config):
    validate(config)
    assert config["suite"] == "paper"
    demo = copy.deepcopy(config)
    demo["suite"] = "demo"
    validate(demo)


def test_validation_adds_nothing(config, shipped):
    validate(config)
    assert config == shipped  # no schema defaults: every value is written in config.yaml


def test_paper_grid_is_the_papers(shipped):
    paper = shipped["suites"]["paper"]
    pairs = [(p["dataset"], p["model"]) for p in paper["table1"]["pairs"]]
    assert pairs == [
        ("scienceqa", "llava-1.5-7b"), ("scienceqa", "llava-1.5-13b"), ("vizwiz", "llava-1.5-7b"),
        ("mmbench_video", "qwen2.5-vl"),
    ]
    assert paper["table1"]["placements"] == ["attn", "mlp", "proj"] and paper["table1"]["ratio"] == 0.10
    assert paper["table3"]["ratios"] == [0.05, 0.10, 0.15]
    assert (paper["train"]["epochs"], paper["train"]["lr"], paper["train"]["batch_size"]) == (10, 2e-4, 8)
    assert shipped["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05}
    assert shipped["router"]["gate_init"] == 0.5
    assert paper["datasets"]["mmbench_video"]["audio"] == "transcript"


@pytest.mark.parametrize(
    "path, key",
    [
        ((), "sede"),
        (("lora",), "rank"),
        (("router",), "ratio"),  # k' is set per table, not on the router
        (("suites", "demo"), "epochs"),
        (("suites", "demo", "train"), "learning_rate"),
        (("suites", "paper", "datasets", "vizwiz"), "split"),
        (("suites", "paper", "models", "qwen2.5-vl"), "hub"),
        (("suites", "demo", "table1", "pairs", 0), "placement"),
    ],
)
def test_unknown_key_is_rejected_by_name(config, path, key):
    node = config
    for step in path:
        node = node[step]
    node[key] = 1
    message = rejected(config)
    assert f"'{key}' was unexpected" in message


@pytest.mark.parametrize(
    "path, value, where",
    [
        (("suite",), "full", "suite"),
        (("seeds",), [0, 0], "seeds"),
        (("seeds",), [-1], "seeds"),
        (("lora", "dropout"), 1.0, "dropout"),
        (("lora", "r"), 0, "config.lora.r:"),
        (("router", "scope"), "global", "scope"),
        (("router", "gate_init"), 1.0, "gate_init"),
        (("suites", "demo", "device"), "tpu", "device"),
        (("suites", "paper", "table1", "ratio"), 1.5, "ratio"),
        (("suites", "paper", "table1", "placements"), ["attn", "ffn"], "placements"),
        (("suites", "paper", "table3", "ratios"), [0.05, -0.1], "ratios"),
        (("suites", "paper", "train", "epochs"), 0, "epochs"),
        (("suites", "paper", "train", "lr"), "2e-4", "lr"),  # a string, not a number (YAML quoted it)
        (("suites", "paper", "media", "max_bad_share"), 2, "max_bad_share"),
        (("suites", "paper", "encoder_cache", "dtype"), "int8", "dtype"),
        (("suites", "demo", "datasets", "synth-image", "audio"), "transcript", "audio"),
        (("suites", "demo", "datasets", "synth-image", "splits", "eval"), "dev", "eval"),
        (("suites", "paper", "encoder_cache", "shard_bytes"), 1000, "shard_bytes"),
        (("suites", "paper", "transcripts", "max_tokens"), 0, "max_tokens"),
        (("suites", "paper", "train", "group_by_length"), "yes", "group_by_length"),
        (("suites", "study", "pretrain", "lr_schedule"), "exponential", "lr_schedule"),
        (("suites", "study", "datasets", "synth-video", "synthetic", "pretrain_hint_accuracy"), "sometimes",
         "pretrain_hint_accuracy"),
        (("suites", "study", "datasets", "synth-video", "synthetic", "background"), "stripes", "background"),
        (("suites", "study", "pretrain", "warmup_steps"), -1, "warmup_steps"),
        (("suites", "paper", "judge", "workers"), 0, "workers"),
        (("suites", "paper", "judge", "max_failed_share"), 1.5, "max_failed_share"),
        (("suites", "paper", "judge", "backoff_s"), -1, "backoff_s"),
        (("suites", "paper", "datasets", "vizwiz", "eval_batch_size"), 0, "eval_batch_size"),
        (("suites", "paper", "models", "llava-1.5-7b", "checkpoint_every_n_layers"), 0, "checkpoint_every_n_layers"),
        (("suites", "paper", "hub", "cache_dir"), "data/hub; rm -rf", "cache_dir"),
    ],
)
def test_bad_value_is_rejected_by_name(config, path, value, where):
    node = config
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    assert where in rejected(config)


def test_names_must_be_usable_in_run_names(config):
    datasets = config["suites"]["demo"]["datasets"]
    datasets["synth__image"] = datasets.pop("synth-image")  # "__" separates the fields of a run name
    assert "synth__image" in rejected(config)


def test_frame_sampling_needs_exactly_one_of_num_frames_and_fps(config):
    media = config["suites"]["paper"]["media"]
    media["fps"] = 1.0
    assert "media" in rejected(config)
    media["num_frames"] = None
    validate(config)


def test_source_decides_the_required_keys(config):
    broken = copy.deepcopy(config)
    del broken["suites"]["paper"]["models"]["qwen2.5-vl"]["hub_id"]
    assert "hub_id" in rejected(broken)
    broken = copy.deepcopy(config)
    del broken["suites"]["demo"]["datasets"]["synth-video"]["synthetic"]
    assert "synthetic" in rejected(broken)
    broken = copy.deepcopy(config)
    broken["suites"]["demo"]["datasets"]["synth-image"]["synthetic"]["frames"] = 8  # image data has no frames
    assert "synth-image" in rejected(broken)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "path",
    [
        ("suites", "paper", "media", "max_bad_share"),  # NaN would make the extraction never fail
        ("suites", "demo", "table1", "ratio"),
        ("suites", "demo", "train", "lr"),
        ("router", "gate_init"),
        ("lora", "dropout"),
    ],
)
def test_non_finite_numbers_are_rejected_by_name(config, path, value):
    node = config
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    assert rejected(config).startswith("config." + ".".join(path) + ":")


@pytest.mark.parametrize(
    "path, value",
    [
        (("suites", "paper", "models", "qwen2.5-vl", "hub_id"), "Qwen/$(id>&2)"),
        (("suites", "paper", "models", "qwen2.5-vl", "hub_id"), "Qwen/Qwen 7B"),
        (("suites", "paper", "models", "qwen2.5-vl", "revision"), "main; touch PWNED"),
        (("suites", "paper", "models", "qwen2.5-vl", "revision"), "main\n"),  # a pattern's $ allows a final newline
        (("suites", "paper", "judge", "url"), "https://api.openai.com/v1 $(touch PWNED)"),
        (("suites", "paper", "judge", "url"), "https://host/v1'"),
        (("suites", "paper", "judge", "url"), "file:///etc/passwd"),
        (("suites", "paper", "judge", "model"), "gpt-4 `id`"),
        (("suites", "paper", "judge", "api_key_env"), "KEY; id"),
        (("suites", "paper", "transcripts", "language"), "en $(touch PWNED)"),
        (("suites", "paper", "transcripts", "language"), "english"),
        (("suites", "paper", "transcripts", "model"), "openai/whisper-small && id"),
    ],
)
def test_strings_that_reach_a_process_are_what_they_can_be(config, path, value):
    node = config
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    assert rejected(config).startswith("config." + ".".join(path) + ":")


@pytest.mark.parametrize(
    "path, value",
    [
        (("suites", "paper", "transcripts", "language"), "pt-BR"),
        (("suites", "paper", "transcripts", "language"), None),
        (("suites", "paper", "judge", "url"), "http://127.0.0.1:8000/v1"),
        (("suites", "paper", "judge", "model"), "meta-llama/Llama-3.1-8B-Instruct"),
        (("suites", "paper", "models", "qwen2.5-vl", "revision"), "cc594898137f460bfe9f0759e9844b3ce807cfb5"),
        (("suites", "paper", "models", "qwen2.5-vl", "revision"), "refs/pr/12"),
    ],
)
def test_legitimate_strings_are_accepted(config, path, value):
    node = config
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    validate(config)


def test_k_values_that_share_a_run_name_are_refused_naming_both(config):
    config["suites"]["demo"]["table3"]["ratios"] = [0.05, 0.05000001, 0.15]
    message = rejected(config)
    assert "0.05 and 0.05000001" in message and "'moir-k0.05'" in message


@pytest.mark.parametrize("suite, dataset, role", [("paper", "vizwiz", "val"), ("paper", "scienceqa", "train"),
                                                 ("demo", "synth-video", "val")])
def test_a_validation_or_training_split_that_is_the_evaluation_split_is_refused(config, suite, dataset, role):
    splits = config["suites"][suite]["datasets"][dataset]["splits"]
    splits[role] = splits["eval"]
    message = rejected(config)
    assert f"suites.{suite}.datasets.{dataset}.splits: {role} and eval are both {splits['eval']!r}" in message


def test_vizwiz_validation_is_held_out_of_train_and_settings_reach_the_stages(config):
    assert config["suites"]["paper"]["datasets"]["vizwiz"]["splits"] == {
        "train": "train", "val": "val_heldout", "eval": "val"}
    validate(config)
    plan = Plan(config)
    run = next(name for name, run in plan.runs.items() if run.dataset == "vizwiz")
    assert plan.train_inputs(run)["val_manifest"] == "data/manifests/vizwiz/val_heldout.parquet"
    assert "keep" not in plan.train_settings(run).to_dict()  # keep: last, the JSON of every run as before
    config["suites"]["paper"]["train"]["keep"] = "best"
    assert Plan(config).train_settings(run).to_dict()["keep"] == "best"
    judged = next(key for key, ev in plan.evaluations.items() if ev.dataset == "mmbench_video")
    assert plan.evaluate_settings(judged).to_dict()["judge"] == "defer"  # the rule `judge` scores the answers
    settings = plan.judge_settings().to_dict()
    assert settings["judge_correct_threshold"] == 2 and settings["max_failed_share"] == 0.02
    unjudged = next(key for key, ev in plan.evaluations.items() if ev.dataset == "vizwiz")
    assert "judge_correct_threshold" not in plan.evaluate_settings(unjudged).to_dict()


def test_seeds_from_the_command_line_are_coerced(config):
    for given, expected in ((1, [1]), ("1", [1]), (["0", "1"], [0, 1]), ([0, 1], [0, 1])):
        config["seeds"] = given
        validate(config)
        assert config["seeds"] == expected


def test_a_suite_brings_its_seeds_and_the_command_line_overrides_them(config):
    validate(config)
    assert config["seeds"] is None  # the shipped default: each suite's own seeds
    config["suite"] = "study"
    assert Plan(config).seeds == [0, 1, 2]
    config["suite"] = "demo"
    assert Plan(config).seeds == [0]
    config["seeds"] = [3]  # --config seeds=3
    assert Plan(config).seeds == [3]
    del config["suites"]["demo"]["seeds"]
    config["seeds"] = None
    assert Plan(config).seeds == [0]  # a suite without seeds: seed 0
    config["suites"]["study"]["seeds"] = [1, 1]
    assert "suites.study.seeds" in rejected(config)


def test_the_plan_of_the_demo(config):
    validate(config)
    config["suite"] = "demo"
    demo = Plan(config)
    # Table 5 adds FT and MoIR with compression (2 runs, 2 evaluations) and the compressed base's evaluation
    assert len(demo.runs) == 13 + 2 and len(demo.evaluations) == 2 + 13 + 2 + 1 + 2 + 1
    run = "synth-image__tiny-llava__attn__moir-k0.05__seed0"
    assert demo.train_settings(run).router.ratio == 0.05  # k' travels as a float, never through the name
    assert demo.train_settings("synth-image__tiny-llava__attn__ft__seed0").router is None
    with pytest.raises(PlanError, match="run 'nope' is not in the grid of suite 'demo'; the grid: synth-image__"):
        demo.run("nope")


def test_the_pretraining_schedule_reaches_the_study_s_bases_and_a_constant_rate_keeps_the_json(config):
    validate(config)
    config["suite"] = "demo"  # lr_schedule: constant, warmup_steps: 0
    assert not {"lr_schedule", "warmup_steps"} & set(Plan(config).pretrain_settings("tiny-llava").to_dict())
    config["suite"] = "study"
    settings = Plan(config).pretrain_settings("tiny-llava").to_dict()
    assert settings["lr_schedule"] == "cosine" and settings["warmup_steps"] == 100


def test_pretraining_phases_reach_the_stage_and_exclude_pretrain_epochs(config):
    validate(config)
    config["suite"] = "study"
    model = config["suites"]["study"]["models"]["tiny-qwen2.5-vl"]
    model.pop("pretrain_epochs", None)
    model["pretrain_phases"] = [{"epochs": 2, "question_weights": {"direction": 0}, "lr": 1e-3, "lr_schedule": "constant"},
                                {"epochs": 1, "question_weights": {"direction": 3, "colour change": 0.5}}]
    validate(config)
    settings = Plan(config).pretrain_settings("tiny-qwen2.5-vl").to_dict()
    assert settings["phases"] == "2:direction=0@lr=0.001,lr_schedule=constant;1:colour change=0.5,direction=3"
    assert settings["epochs"] == 3
    assert "phases" not in Plan(config).pretrain_settings("tiny-llava").to_dict()  # its JSON as before the option
    model["pretrain_epochs"] = 3
    assert "tiny-qwen2.5-vl" in rejected(config)
    del model["pretrain_epochs"]
    for bad in ([], [{"epochs": 0}], [{"epochs": 1, "question_weights": {"direction": -1}}],
                [{"epochs": 1, "question_weights": {"a;b": 1}}], [{"epochs": 1, "weights": {}}],
                [{"epochs": 1, "lr": 0}], [{"epochs": 1, "lr_schedule": "step"}], [{"epochs": 1, "warmup_steps": -1}]):
        model["pretrain_phases"] = bad
        assert "pretrain_phases" in rejected(config), bad


def test_the_video_background_and_chance_hints_reach_the_generator(config):
    validate(config)
    config["suite"] = "study"
    settings = Plan(config).synth_settings("synth-video").to_dict()
    assert settings["background"] == "gradient" and settings["pretrain_hint_accuracy"] == "chance"
    config["suites"]["study"]["datasets"]["synth-video"]["synthetic"]["background"] = "plain"
    assert "background" not in Plan(config).synth_settings("synth-video").to_dict()  # data made before the option
    config["suites"]["study"]["datasets"]["synth-image"]["synthetic"]["background"] = "gradient"
    assert "synth-image" in rejected(config)  # a video setting


# ------------------------------------------------------------------------------ through Snakemake, before any job


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "-n", "--cores", "1", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_snakemake_rejects_a_bad_command_line_value(tmp_path):
    result = dry_run(tmp_path, "--config", "suite=full")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "config.suite: 'full' is not one of ['paper', 'demo', 'study']" in output
    assert "Building DAG" not in output


def test_an_unknown_key_is_named_without_dumping_the_config(tmp_path):
    result = dry_run(tmp_path, "--config", "suite=demo", "sede=1")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "config: Additional properties are not allowed ('sede' was unexpected)" in output
    assert "llava-hf/llava-1.5-7b-hf" not in output and len(output.splitlines()) < 15  # not the whole config


@pytest.mark.parametrize("seeds, expected", [("seeds=1", ["seed1"]), ("seeds=[0,1]", ["seed0", "seed1"])])
def test_seeds_on_the_command_line(tmp_path, seeds, expected):
    result = dry_run(tmp_path, "--config", "suite=demo", seeds)
    assert result.returncode == 0, result.stdout + result.stderr
    planned = {line.rsplit("__", 1)[1] for line in result.stdout.splitlines()
               if line.strip().startswith("wildcards: run=")}
    assert sorted(planned) == expected


def test_forgetting_the_suite_says_what_to_set(tmp_path):
    result = dry_run(tmp_path)  # config.yaml selects the paper suite; its data are not downloaded here
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "--config suite=demo" in output and "--config suite=paper" in output
    assert "workflow/profiles/slurm/config.yaml" in output and "download_data" not in output


def test_a_run_outside_the_grid_is_named_with_the_grid(tmp_path):
    target = "results/demo/runs/synth-image__tiny-llava__attn__moir-k0.3__seed0"
    result = dry_run(tmp_path, "--config", "suite=demo", "--", target)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "the run 'synth-image__tiny-llava__attn__moir-k0.3__seed0' is not in the grid of suite 'demo'" in output
    assert "synth-image__tiny-llava__attn__moir-k0.05__seed0" in output  # the grid is listed


def test_snakemake_rejects_a_name_that_refers_to_nothing(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("suites:\n  demo:\n    table2: {dataset: synth-audio, model: tiny-llava, placement: attn}\n")
    result = dry_run(tmp_path, "--configfile", str(override), "--config", "suite=demo")
    assert result.returncode != 0
    assert "suites.demo.table2.dataset: 'synth-audio' is not one of suites.demo.datasets" in result.stdout + result.stderr


def test_a_config_value_reaches_the_shell_as_one_quoted_word(tmp_path):
    """Even a value the schema would let through never runs in the shell: every value is passed with `:q`. The
    schema's pattern for the ASR language is removed in a copy, and the dry run's command is run by bash with a
    `python` that prints its arguments: the value arrives whole, and nothing it names was executed."""
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy2(REPO / "config.yaml", work / "config.yaml")
    for name in ("workflow", "moir", "envs"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    schema = work / "workflow" / "schemas" / "config.schema.yaml"
    text = schema.read_text()
    assert 'pattern: "^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"' in text
    schema.write_text(text.replace('pattern: "^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"', "minLength: 1"))
    hostile = "en $(touch PWNED) `touch PWNED2`; touch PWNED3 'x\" $HOME"
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"suites": {"paper": {"transcripts": {"language": hostile}}}}))
    result = subprocess.run([*SNAKEMAKE, "-n", "-p", "--cores", "1", "--configfile", str(override), "--config",
                             "suite=paper", "--", "data/transcripts/mmbench_video/test.parquet"], cwd=work,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line.removeprefix("Shell command: ") for line in result.stdout.splitlines()
                if line.startswith("Shell command: python -m moir.media transcribe")]
    assert len(commands) == 1
    words = shlex.split(commands[0])
    assert json.loads(words[words.index("--settings") + 1])["language"] == hostile
    (work / "logs" / "paper" / "media").mkdir(parents=True)
    run = subprocess.run(["bash", "-c", 'python() { printf "%s\\n" "$@"; }\n' + commands[0]], cwd=work,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()
    assert json.loads(printed[printed.index("--settings") + 1])["language"] == hostile  # one word, unexpanded
    assert not [path for path in work.iterdir() if path.name.startswith("PWNED")]


def test_an_encoder_cache_needs_a_shard_limit(config):
    config["suites"]["paper"]["encoder_cache"].update(shard_size=None, shard_bytes=None)
    assert "encoder_cache" in rejected(config)


def test_a_pixel_budget_is_checked_and_belongs_to_qwen(config):
    budget = config["suites"]["paper"]["models"]["qwen2.5-vl"]["pixel_budget"]
    assert budget == {"image_min_pixels": 3136, "image_max_pixels": 802816, "video_min_pixels": 3136,
                      "video_max_pixels": 100352, "video_total_pixels": 802816}  # moir.models.pixel_budget.PAPER_BUDGET
    budget["video_min_pixels"] = budget["video_max_pixels"] + 1
    assert "qwen2.5-vl.pixel_budget: video_min_pixels" in rejected(config)
    budget["video_min_pixels"] = 3136
    config["suites"]["paper"]["models"]["llava-1.5-7b"]["pixel_budget"] = dict(budget)
    assert "llava-1.5-7b.pixel_budget: only Qwen2.5-VL" in rejected(config)


def test_the_paper_budget_in_the_config_is_the_library_s(shipped):
    import dataclasses

    from moir.models.pixel_budget import PAPER_BUDGET

    configured = shipped["suites"]["paper"]["models"]["qwen2.5-vl"]["pixel_budget"]
    assert configured == dataclasses.asdict(PAPER_BUDGET)
