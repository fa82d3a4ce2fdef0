"""benchmarks/gpu_step.py in smoke mode (CPU, narrow widths, one decoder layer): the script the first GPU runs
must work end to end: every model's architecture builds, both training variants step, generation runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_step.py"


@pytest.fixture(scope="module")
def gpu_step():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["llava-1.5-13b", "qwen2.5-vl"])
def test_smoke_run(gpu_step, model, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert gpu_step.main(["--smoke", "--layers", "1", "--models", model, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["what"] for row in rows] == ["train ft", "train moir", "generate"]
    assert all(row["layers"] == 1 and row["tokens"] > 0 and row["seconds"] > 0 for row in rows)
    assert rows[0]["tokens"] == rows[1]["tokens"] and "moir_over_ft" in rows[1]
    visual = 16 if model == "qwen2.5-vl" else 576  # smoke: a (2, 4, 8) video grid; LLaVA's 576 per image
    assert rows[0]["tokens"] > 2 * visual  # two examples, each with its visual tokens
    printed = capsys.readouterr().out
    assert "moir/ft" in printed and model in printed
