"""config.yaml against workflow/schemas/config.schema.yaml: the shipped config is valid, and an unknown key or a bad
value is rejected before anything runs, with a message that names the key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture
def config(shipped) -> dict:
    return copy.deepcopy(shipped)


def rejected(config: dict) -> str:
    """Validate and return the error text; fails the test when the config is accepted."""
    with pytest.raises(WorkflowError) as error:
        validate(config, SCHEMA)
    return str(error.value)


def test_shipped_config_is_valid(config):
    validate(config, SCHEMA)
    assert config["suite"] == "paper"
    demo = copy.deepcopy(config)
    demo["suite"] = "demo"
    validate(demo, SCHEMA)


def test_validation_adds_nothing(config, shipped):
    validate(config, SCHEMA)
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
        (("lora", "r"), 0, "'r'"),
        (("router", "scope"), "global", "scope"),
        (("router", "gate_init"), 1.0, "gate_init"),
        (("suites", "demo", "device"), "tpu", "device"),
        (("suites", "paper", "table1", "ratio"), 1.5, "ratio"),
        (("suites", "paper", "table1", "placements"), ["attn", "ffn"], "placements"),
        (("suites", "paper", "table3", "ratios"), [0.05, -0.1], "ratios"),
        (("suites", "paper", "train", "epochs"), 0, "epochs"),
        (("suites", "paper", "train", "lr"), "2e-4", "lr"),  # a string, not a number (YAML quoted it)
        (("suites", "paper", "media", "max_bad_share"), 2, "max_bad_share"),
        (("suites", "paper", "tokens", "dtype"), "int8", "dtype"),
        (("suites", "demo", "datasets", "synth-image", "audio"), "transcript", "audio"),
        (("suites", "demo", "datasets", "synth-image", "splits", "eval"), "dev", "eval"),
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
    validate(config, SCHEMA)


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


# ------------------------------------------------------------------------------ through Snakemake, before any job


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "-n", "--cores", "1", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_snakemake_rejects_a_bad_command_line_value(tmp_path):
    result = dry_run(tmp_path, "--config", "suite=full")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Error validating config file" in output and "'full' is not one of ['paper', 'demo']" in output
    assert "Building DAG" not in output


def test_snakemake_rejects_a_name_that_refers_to_nothing(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("suites:\n  demo:\n    table2: {dataset: synth-audio, model: tiny-llava, placement: attn}\n")
    result = dry_run(tmp_path, "--configfile", str(override), "--config", "suite=demo")
    assert result.returncode != 0
    assert "suites.demo.table2.dataset: 'synth-audio' is not one of suites.demo.datasets" in result.stdout + result.stderr
