"""End to end: the demo DAG run for real, at a reduced size, from nothing to the report; the tables hold the numbers
the evaluations measured; a second run has nothing to do; `snakemake --report` builds the HTML report.

Every stage runs as in `snakemake --cores 2 --config suite=demo` (the README's first command): the synthetic data,
frames and audio, token caches, the pretrained tiny bases, the 15 LoRA runs with and without MoIR (and visual-token
compression), every evaluation and the report. Only the sizes are smaller (OVERRIDES below, written to
e2e_demo.yaml in the run's working directory and merged over config.yaml).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = {
    "suites": {
        "demo": {
            "datasets": {
                "synth-image": {"synthetic": {"sizes": {"pretrain": 480, "train": 64, "val": 24, "test": 40}}},
                "synth-video": {"synthetic": {"sizes": {"pretrain": 48, "train": 24, "val": 8, "test": 16}}},
            },
            "pretrain": {"epochs": 1},
            "train": {"epochs": 1, "checkpoint_every": 0},
        }
    }
}


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def number(text: str) -> float:
    value = float(text)
    assert math.isfinite(value)
    return value


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("e2e")
    shutil.copy2(REPO / "config.yaml", workdir / "config.yaml")
    for name in ("workflow", "moir", "envs"):
        shutil.copytree(REPO / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
    (workdir / "e2e_demo.yaml").write_text(yaml.safe_dump(OVERRIDES))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "e2e_demo.yaml",
         "--config", "suite=demo"],
        cwd=workdir, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-20000:]
    return workdir


def metrics(workdir: Path, run: str, evaluation: str) -> dict:
    return json.loads((workdir / "results/demo/eval" / run / evaluation / "metrics.json").read_text())["summary"]


@pytest.mark.slow
def test_tables_hold_the_measured_numbers(demo_run):
    report = demo_run / "results/demo/report"
    table1 = read_csv(report / "table1.csv")
    assert [(r["dataset"], r["model"], r["placement"], r["method"]) for r in table1] == [
        row
        for dataset, model in (("synth-image", "tiny-llava"), ("synth-video", "tiny-qwen2.5-vl"))
        for row in [(dataset, model, "", "base")] + [(dataset, model, placement, method)
                                                   for placement in ("attn", "mlp", "proj")
                                                   for method in ("ft", "moir")]
    ]
    for row in (row for row in table1 if row["method"] == "base"):  # the reference of the rank deltas
        measured = metrics(demo_run, f"{row['dataset']}__{row['model']}__base", "clean")
        assert number(row["acc"]) == pytest.approx(measured["acc"]) and number(row["mdi"]) == pytest.approx(
            measured["mdi"])
    table1 = [row for row in table1 if row["method"] != "base"]
    for row in table1:
        arm = "ft" if row["method"] == "ft" else "moir-k0.1"
        measured = metrics(demo_run, f"{row['dataset']}__{row['model']}__{row['placement']}__{arm}__seed0", "clean")
        for key in ("acc", "rank_delta_image", "rank_delta_text", "mdi", "aei"):
            assert number(row[key]) == pytest.approx(measured[key]), (row, key)
        assert 0 <= number(row["acc"]) <= 100
        assert number(row["mdi"]) > 0 and number(row["aei"]) > 0
        assert row["modality"] == {"synth-image": "I+T", "synth-video": "V+T"}[row["dataset"]]
        assert "acc_paper" not in row

    table2 = read_csv(report / "table2.csv")
    assert [r["method"] for r in table2] == ["ft", "moir"]
    for row in table2:
        arm = "ft" if row["method"] == "ft" else "moir-k0.1"
        measured = metrics(demo_run, f"synth-image__tiny-llava__attn__{arm}__seed0", "noise")
        assert number(row["unchanged_all"]) == pytest.approx(measured["unchanged_all"])
        assert 0 <= number(row["unchanged_all"]) <= 100

    table3 = read_csv(report / "table3.csv")
    assert [float(r["k_ratio"]) for r in table3] == [0.05, 0.1]
    assert table3[1]["acc"] == next(r["acc"] for r in table1 if r["placement"] == "attn" and r["method"] == "moir")

    table5 = {row["arm"]: row for row in read_csv(report / "table5.csv")}  # visual-token compression
    assert list(table5) == ["base", "base+keep0.25", "ft", "moir-k0.1", "ft+keep0.25", "moir-k0.1+keep0.25"]
    measured = metrics(demo_run, "synth-image__tiny-llava__attn__ft+keep0.25__seed0", "clean")
    assert number(table5["ft+keep0.25"]["acc"]) == pytest.approx(measured["acc"])
    assert number(table5["ft+keep0.25"]["visual_tokens"]) == 16 and number(table5["ft"]["visual_tokens"]) == 64
    assert int(table5["ft+keep0.25"]["mdi_n"]) > 0 and number(table5["ft+keep0.25"]["step_time_rel"]) > 0

    markdown = (report / "report.md").read_text()
    assert "| synth-image | I+T | tiny-llava | Attn | FT |" in markdown
    for figure in ("mdi_aei", "accuracy_rank", "ablation", "gates", "robustness"):
        assert (report / f"{figure}.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_a_second_run_has_nothing_to_do(demo_run):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--configfile", "e2e_demo.yaml",
         "--config", "suite=demo"],
        cwd=demo_run, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_snakemake_builds_the_html_report(demo_run):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--report", "results/demo/report.html", "--configfile", "e2e_demo.yaml",
         "--config", "suite=demo"],
        cwd=demo_run, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    html = (demo_run / "results/demo/report.html").read_text(errors="replace")
    assert "table1.csv" in html and "gates.png" in html
