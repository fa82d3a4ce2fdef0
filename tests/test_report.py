"""moir.report on hand-made evaluation outputs: the tables hold exactly the numbers of the metrics files (and the
paper's beside them), seeds are averaged, figures are written, and bad inputs fail naming the file and field."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import matplotlib.text
import pytest

from moir.plan import Arm, ReportSettings, Tables
from moir.report import build as report
from moir.report.build import ReportError, build_report, collect, write_tables

REFERENCE = Path(report.__file__).parents[1] / "reference"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def clean_metrics(acc, mdi, aei, delta_image, delta_text, *, acc_img=None, judge=None, n=300):
    """A clean evaluation's metrics.json as moir.evaluate writes it (the fields the report reads)."""
    by_protocol = {}
    if acc_img is not None:
        by_protocol["multiple_choice"] = {"accuracy": acc, "image_subset": {"n": 10, "accuracy": acc_img}}
    if judge is not None:
        by_protocol["open_ended"] = {"accuracy": 100 * judge / 3, "mean_score": judge}
    return {
        "mode": "clean",
        "accuracy": {"value": acc, "n": n, "by_protocol": by_protocol},
        "dominance": {
            "mdi": {third: {"mean": mdi + i} for i, third in enumerate(("all", "early", "middle", "late"))},
            "aei": {third: {"mean": aei} for third in ("all", "early", "middle", "late")},
        },
        "summary": {
            "acc": acc, "mdi": mdi, "aei": aei, "rank_image": 10.0 + delta_image, "rank_text": 20.0 + delta_text,
            "rank_delta_image": delta_image, "rank_delta_text": delta_text,
            "unchanged_all": None, "unchanged_vision_dependent": None, "unchanged_vision_irrelevant": None,
        },
    }


def noise_metrics(all_, dependent, irrelevant):
    return {"mode": "noise", "summary": {"acc": 10.0, "unchanged_all": all_,
                                         "unchanged_vision_dependent": dependent,
                                         "unchanged_vision_irrelevant": irrelevant},
            "robustness": {"all": {"n": 300}, "vision_dependent": {"n": 180}, "vision_irrelevant": {"n": 120}}}


def write(results: Path, run: str, evaluation: str, metrics: dict) -> None:
    path = results / "eval" / run / evaluation / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def write_gates(results: Path, run: str, steps: int = 4) -> None:
    path = results / "runs" / run / "train_metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"kind": "step", "step": s, "loss": 1.0, "alpha_a_mean": 0.5 + 0.01 * s, "alpha_b_mean": 0.5 - 0.01 * s}
             for s in range(1, steps + 1)]
    lines.append({"kind": "epoch", "epoch": 1, "step": steps, "val_loss": 0.9})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def run_name(arm: Arm, seed: int) -> str:
    return arm.run(seed).name


def base_name(dataset: str, model: str) -> str:
    return f"{dataset}__{model}__base"  # the workflow's name of a base model's evaluation (moir.plan.Plan.base_name)


def settings(spec: Spec, results: Path, **references) -> ReportSettings:
    """What the report rule passes: the layout and the path of every file it reads (here: the workflow's layout)."""
    tables = spec.tables
    evaluations, gates = {}, {}
    for arms, mode in ((tables.table1() + tables.table3_arms(), "clean"), (tables.table2_arms(), "noise")):
        for arm in arms:
            for seed in spec.seeds:
                evaluations[f"{run_name(arm, seed)}/{mode}"] = str(results / "eval" / run_name(arm, seed) / mode
                                                                   / "metrics.json")
                if arm.method == "moir":
                    gates[run_name(arm, seed)] = str(results / "runs" / run_name(arm, seed) / "train_metrics.jsonl")
    for dataset, model in tables.pairs:
        evaluations[f"{base_name(dataset, model)}/clean"] = str(results / "eval" / base_name(dataset, model) / "clean"
                                                               / "metrics.json")
    return ReportSettings(tables=tables.to_dict(), seeds=list(spec.seeds), modality=spec.modality,
                          evaluations=evaluations, gates=gates,
                          reference_tables=str(references["reference_tables"]) if references else None,
                          reference_robustness=str(references["reference_robustness"]) if references else None)


def fill(results: Path, spec: Spec, value) -> None:
    """Metrics for every arm and seed of `spec`; `value(arm, seed)` gives (acc, mdi, aei, dI, dT)."""
    for arm in spec.tables.table1() + spec.tables.table3_arms():
        for seed in spec.seeds:
            write(results, run_name(arm, seed), "clean", clean_metrics(*value(arm, seed)))
            if arm.method == "moir":
                write_gates(results, run_name(arm, seed))
    for dataset, model in spec.tables.pairs:
        base = clean_metrics(*value(Arm(dataset, model, "attn", "ft", None), 0))
        base["summary"].update(acc=base["summary"]["acc"] - 20, rank_delta_image=None, rank_delta_text=None)
        write(results, base_name(dataset, model), "clean", base)
    for arm, numbers in zip(spec.tables.table2_arms(), ((60.0, 55.0, 70.0), (30.0, 25.0, 40.0))):
        for seed in spec.seeds:
            write(results, run_name(arm, seed), "noise", noise_metrics(*numbers))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class Spec:
    tables: Tables
    seeds: tuple[int, ...]
    modality: dict


DEMO = Spec(
    Tables(pairs=(("synth-image", "tiny-llava"), ("synth-video", "tiny-qwen2.5-vl")), placements=("attn", "mlp", "proj"),
           ratio=0.1, table2=("synth-image", "tiny-llava", "attn"), table3=("synth-image", "tiny-llava", "attn"),
           ratios=(0.05, 0.1, 0.15)),
    seeds=(0,),
    modality={"synth-image": "I+T", "synth-video": "V+T"},
)


def demo_value(arm: Arm, seed: int):
    """Distinct numbers per arm, so a row mixed up with another shows."""
    base = {"synth-image": 50.0, "synth-video": 30.0}[arm.dataset] + {"attn": 1, "mlp": 2, "proj": 3}[arm.placement]
    if arm.method == "moir":
        base += 10 * arm.ratio * 10
    return base, base / 10, 1.0 + base / 100, base / 20, base / 50


def test_run_names_follow_the_workflow_convention():
    assert run_name(Arm("synth-image", "tiny-llava", "attn", "ft", None), 0) == "synth-image__tiny-llava__attn__ft__seed0"
    assert (run_name(Arm("vizwiz", "llava-1.5-7b", "mlp", "moir", 0.10), 3)
            == "vizwiz__llava-1.5-7b__mlp__moir-k0.1__seed3")
    assert run_name(Arm("a", "b", "proj", "moir", 0.05), 0).endswith("moir-k0.05__seed0")


def tables(spec: Spec, results: Path, out: Path, **references) -> dict[int, list[dict]]:
    """The tables alone (figures take seconds to draw; test_figures_and_page_are_written draws them)."""
    collected = collect(settings(spec, results, **references))
    write_tables(collected, out)
    return collected.rows


def test_demo_tables_hold_the_evaluations_numbers(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, DEMO, demo_value)
    rows = tables(DEMO, results, out)

    table1 = read_csv(out / "table1.csv")
    assert len(table1) == 2 * (1 + 3 * 2)  # per pair: the base model, then FT and MoIR per placement
    base = [row for row in table1 if row["method"] == "base"]
    assert [(row["dataset"], row["placement"], float(row["acc"]), row["rank_delta_image"]) for row in base] == [
        ("synth-image", "", 51.0 - 20, ""), ("synth-video", "", 31.0 - 20, "")]
    assert table1.index(base[1]) == 7 and float(table1[0]["n_questions"]) == 300
    table1 = [row for row in table1 if row["method"] != "base"]
    for row in table1:
        ratio = float(row["k_ratio"]) if row["k_ratio"] else None
        arm = Arm(row["dataset"], row["model"], row["placement"], row["method"], ratio)
        acc, mdi, aei, d_image, d_text = demo_value(arm, 0)
        assert float(row["acc"]) == pytest.approx(acc)
        assert float(row["mdi"]) == pytest.approx(mdi)
        assert float(row["mdi_late"]) == pytest.approx(mdi + 3)
        assert float(row["aei"]) == pytest.approx(aei)
        assert float(row["mdi_abs_log"]) == pytest.approx(abs(math.log(mdi)))
        assert float(row["rank_delta_image"]) == pytest.approx(d_image)
        assert float(row["rank_delta_text"]) == pytest.approx(d_text)
        assert row["acc_std"] == ""  # one seed
        assert row["modality"] == DEMO.modality[row["dataset"]]
        assert "acc_paper" not in row  # no reference for the demo
    assert [(r["placement"], r["method"]) for r in table1[:6]] == [
        ("attn", "ft"), ("attn", "moir"), ("mlp", "ft"), ("mlp", "moir"), ("proj", "ft"), ("proj", "moir")]

    table2 = read_csv(out / "table2.csv")
    assert [(r["method"], float(r["unchanged_all"]), float(r["unchanged_vision_dependent"]),
             float(r["unchanged_vision_irrelevant"])) for r in table2] == [
        ("ft", 60.0, 55.0, 70.0), ("moir", 30.0, 25.0, 40.0)]

    table3 = read_csv(out / "table3.csv")
    assert [float(r["k_ratio"]) for r in table3] == [0.05, 0.1, 0.15]
    for row in table3:
        arm = Arm("synth-image", "tiny-llava", "attn", "moir", float(row["k_ratio"]))
        assert float(row["acc"]) == pytest.approx(demo_value(arm, 0)[0])

    markdown = (out / "table1.md").read_text()
    assert "| synth-image | I+T | tiny-llava | Attn | FT w/ MoIR (k'=0.1) | 61.00 | 3.05 | 1.22 | 6.10 | 1.61 |" in markdown
    assert "| synth-image | I+T | tiny-llava | – | Base (no fine-tuning) | 31.00 | – | – | 5.10 | 1.51 |" in markdown
    assert "|---|---|---|---|---|---:|---:|---:|---:|---:|" in markdown  # numbers right-aligned
    assert "↓" not in markdown and "lower" not in markdown  # MDI/AEI: 1 is balanced, never "lower is better"
    assert "synth-image: 300 test questions, one question = 0.33 points" in markdown
    assert "Rates over 300 questions with an image (one question = 0.33 points)" in (out / "table2.md").read_text()
    assert "synth-image (I+T), tiny-llava, LoRA on the attention layers (Attn)" in (out / "table3.md").read_text()
    latex = (out / "table3.tex").read_text()
    assert r"\begin{tabular}" in latex and r"\bottomrule" in latex and latex.count(r"\\") == 1 + 3
    assert rows[1][2]["method"] == "moir"


def test_figures_and_page_are_written(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, DEMO, demo_value)
    build_report(settings(DEMO, results), out)
    for name in report.FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    page = (out / "report.md").read_text()
    for table in (1, 2, 3):
        assert report.CAPTIONS[table] in page
    for name in report.FIGURES:
        assert f"]({name})" in page
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_seeds_are_averaged_with_their_standard_deviation(tmp_path):
    spec = Spec(DEMO.tables, (0, 1, 2), DEMO.modality)
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, spec, lambda arm, seed: (40.0 + 2 * seed, 5.0, 2.0, float(seed), 1.0))
    tables(spec, results, out)
    base, row = read_csv(out / "table1.csv")[:2]
    assert base["method"] == "base" and base["n_seeds"] == "1" and base["acc_ci95"] == ""  # one base model
    assert float(row["acc"]) == pytest.approx(42.0)  # mean of 40, 42, 44
    assert float(row["acc_std"]) == pytest.approx(2.0)  # sample standard deviation
    assert float(row["rank_delta_image"]) == pytest.approx(1.0) and float(row["rank_delta_image_std"]) == pytest.approx(1.0)
    assert float(row["mdi"]) == 5.0 and float(row["mdi_std"]) == 0.0
    assert row["n_seeds"] == "3"
    assert float(row["acc_ci95"]) == pytest.approx(4.303 * 2.0 / math.sqrt(3))  # t(0.975, 2 dof) * s / sqrt(n)
    markdown = (out / "table1.md").read_text()
    assert f"42.00 ± {4.303 * 2.0 / math.sqrt(3):.2f}" in markdown  # the 95% interval, not only the mean
    assert "Mean ± half-width of the 95% t-interval over 3 seeds." in markdown
    assert "| synth-image | I+T | tiny-llava | – | Base (no fine-tuning) | 20.00 | – | – | 5.00 | 2.00 |" in markdown


PAPER = Spec(
    Tables(pairs=(("scienceqa", "llava-1.5-7b"), ("scienceqa", "llava-1.5-13b"), ("vizwiz", "llava-1.5-7b"),
                  ("mmbench_video", "qwen2.5-vl")),
           placements=("attn", "mlp", "proj"), ratio=0.10, table2=("vizwiz", "llava-1.5-7b", "attn"),
           table3=("vizwiz", "llava-1.5-7b", "attn"), ratios=(0.05, 0.10, 0.15)),
    seeds=(0,),
    modality={"scienceqa": "I+T", "vizwiz": "I+T", "mmbench_video": "V+A+T"},
)


def test_paper_suite_prints_the_papers_numbers_beside_ours(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, PAPER, lambda arm, seed: (50.0, 100.0, 9.0, 20.0, 30.0))
    tables(PAPER, results, out, reference_tables=REFERENCE / "paper_tables.csv",
           reference_robustness=REFERENCE / "paper_robustness.csv")
    with (REFERENCE / "paper_tables.csv").open(newline="") as handle:
        paper = list(csv.DictReader(handle))
    table1 = [row for row in read_csv(out / "table1.csv") if row["method"] != "base"]
    assert len(table1) == 24
    for row in table1:
        match = [p for p in paper if p["table"] == "1" and
                 (p["dataset"], p["model"], p["placement"], p["method"]) ==
                 (row["dataset"], row["model"], row["placement"], row["method"])]
        assert len(match) == 1
        for key in ("acc", "rank_delta_image", "rank_delta_text", "mdi", "aei"):
            assert float(row[f"{key}_paper"]) == float(match[0][key])
    assert [float(r["acc_paper"]) for r in read_csv(out / "table3.csv")] == [31.53, 32.47, 30.06]
    table2 = read_csv(out / "table2.csv")
    assert [float(r["unchanged_all_paper"]) for r in table2] == [62.13, 29.63]
    markdown = (out / "table1.md").read_text()
    assert "| scienceqa | I+T | llava-1.5-7b | Attn | FT | 50.00 (73.68) | 20.00 (12.35) | 30.00 (30.98) |" in markdown
    assert "The paper's number in parentheses." in markdown


def test_missing_values_are_blank_not_zero(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, DEMO, demo_value)
    path = results / "eval" / run_name(Arm("synth-video", "tiny-qwen2.5-vl", "mlp", "ft", None), 0) / "clean" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["summary"]["mdi"] = None  # e.g. no example had both groups of tokens
    path.write_text(json.dumps(metrics))
    tables(DEMO, results, out)
    row = next(r for r in read_csv(out / "table1.csv") if r["dataset"] == "synth-video" and r["placement"] == "mlp"
               and r["method"] == "ft")
    assert row["mdi"] == "" and row["acc"] != ""
    assert "| synth-video | V+T | tiny-qwen2.5-vl | MLP | FT | 32.00 | 1.60 | 0.64 | – |" in (out / "table1.md").read_text()


def test_infinite_mdi_is_reported_as_inf():
    assert report.format_number(math.inf) == "inf"
    assert report.mean_std([math.inf, 2.0]) == (math.inf, None)


def test_a_missing_evaluation_fails_naming_it_and_writes_nothing(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, DEMO, demo_value)
    missing = results / "eval" / run_name(Arm("synth-image", "tiny-llava", "attn", "moir", 0.15), 0) / "clean" / "metrics.json"
    missing.unlink()
    with pytest.raises(ReportError, match=f"{missing}: not found"):
        build_report(settings(DEMO, results), out)
    assert not out.exists()
    argv = ["--settings", settings(DEMO, results).to_json(), "--out", str(out)]
    assert report.main(argv) == 1
    assert not out.exists()


def test_an_evaluation_the_rule_did_not_pass_is_named(tmp_path):
    results = tmp_path / "results"
    fill(results, DEMO, demo_value)
    passed = settings(DEMO, results)
    key = f"{run_name(Arm('synth-image', 'tiny-llava', 'attn', 'moir', 0.15), 0)}/clean"
    del passed.evaluations[key]
    with pytest.raises(ReportError, match=f"no metrics file was passed for the evaluation {key}"):
        collect(passed)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda m: m["summary"].pop("aei"), "missing field 'summary.aei'"),
        (lambda m: m["summary"].update(acc="high"), "field 'summary.acc' is 'high', expected a number"),
        (lambda m: m.pop("summary"), "missing field 'summary.acc'"),
    ],
)
def test_a_malformed_metrics_file_is_named_with_its_field(tmp_path, corrupt, message):
    results = tmp_path / "results"
    fill(results, DEMO, demo_value)
    path = results / "eval" / run_name(Arm("synth-image", "tiny-llava", "mlp", "ft", None), 0) / "clean" / "metrics.json"
    metrics = json.loads(path.read_text())
    corrupt(metrics)
    path.write_text(json.dumps(metrics))
    with pytest.raises(ReportError) as error:
        collect(settings(DEMO, results))
    assert str(error.value) == f"{path}: {message}"


def test_gate_records_are_checked(tmp_path):
    path = tmp_path / "train_metrics.jsonl"
    path.write_text(json.dumps({"kind": "step", "step": 1, "alpha_a_mean": 0.5}) + "\n")
    with pytest.raises(ReportError, match="line 1 \\(a step record\\) has no field 'alpha_b_mean'"):
        report.read_gates(path)
    path.write_text("{not json\n")
    with pytest.raises(ReportError, match="line 1 is not valid JSON"):
        report.read_gates(path)


def test_command_line_arguments_are_checked(tmp_path):
    parser = report.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--settings", "[1, 2]", "--out", "o"])  # not a JSON object
    with pytest.raises(SystemExit):
        parser.parse_args(["--settings", "{not json", "--out", "o"])
    with pytest.raises(ReportError, match=r"missing keys \['gates'\], unknown keys \['typo'\]"):
        passed = settings(DEMO, tmp_path).to_dict()
        del passed["gates"]
        report.read_settings({**passed, "typo": 1})


# ---------------------------------------------------------------------------------------------- breakdowns


def _with_breakdowns(arm: Arm, metrics: dict) -> dict:
    """A clean evaluation's metrics with the VizWiz or MMBench-Video entry moir.evaluate writes for them."""
    if arm.dataset == "vizwiz":
        metrics["accuracy"]["by_protocol"]["vizwiz"] = {
            "n": 40, "accuracy": 55.5,
            "by_answer_type": {"yes/no": {"n": 10, "accuracy": 80.0}, "number": {"n": 5, "accuracy": 20.0},
                               "other": {"n": 20, "accuracy": 50.0}, "unanswerable": {"n": 5, "accuracy": 70.0}},
            "unanswerability": {"average_precision": 33.3, "f1": 44.4},
        }
    if arm.dataset == "mmbench_video":
        dimensions = {f"{level}_{kind}": {"CP" if level == "coarse" else "Video Topic": 1.5, "HL"
                                          if level == "coarse" else "Hallucination": None}
                      for level in ("coarse", "fine") for kind in ("all", "valid")}
        metrics["accuracy"]["by_protocol"]["open_ended"] = {
            "n": 22, "accuracy": 100 * 12 / 22, "judge_correct_threshold": 2, "mean_score": 1.75,
            "mean_score_valid": 1.8, "n_failed": 1, "dimensions": dimensions}
    return metrics


def test_vizwiz_and_mmbench_video_breakdowns_and_the_papers_intervals(tmp_path):
    from moir.metrics import paper_percentage_interval

    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, PAPER, lambda arm, seed: (50.0, 100.0, 9.0, 20.0, 30.0))
    for arm in PAPER.tables.table1() + PAPER.tables.table3_arms():
        path = results / "eval" / run_name(arm, 0) / "clean" / "metrics.json"
        path.write_text(json.dumps(_with_breakdowns(arm, json.loads(path.read_text()))))
    build_report(settings(PAPER, results, reference_tables=REFERENCE / "paper_tables.csv",
                          reference_robustness=REFERENCE / "paper_robustness.csv"), out)
    vizwiz = read_csv(out / "vizwiz_breakdown.csv")
    assert len(vizwiz) == 6 + 2  # Table 1's six VizWiz arms and Table 3's two other k'
    assert all(r["evaluation"].startswith("vizwiz__") and r["evaluation"].endswith("/clean") for r in vizwiz)
    row = vizwiz[0]
    assert (float(row["accuracy"]), float(row["acc_yes/no"]), float(row["acc_unanswerable"]),
            float(row["unanswerable_ap"]), float(row["unanswerable_f1"])) == (55.5, 80.0, 70.0, 33.3, 44.4)
    mmbench = read_csv(out / "mmbench_video_breakdown.csv")
    assert len(mmbench) == 6 and float(mmbench[0]["judged_correct"]) == pytest.approx(100 * 12 / 22)
    assert mmbench[0]["threshold"] == "2" and float(mmbench[0]["CP"]) == 1.5 and mmbench[0]["HL"] == ""
    dimensions = read_csv(out / "mmbench_video_dimensions.csv")
    assert {(r["level"], r["dimension"]) for r in dimensions} == {("coarse", "CP"), ("coarse", "HL"),
                                                                   ("fine", "Video Topic"), ("fine", "Hallucination")}
    intervals = read_csv(out / "paper_intervals.csv")
    first = next(r for r in intervals if r["table"] == "1" and r["dataset"] == "mmbench_video")
    expected = paper_percentage_interval(float(first["paper"]))
    assert (int(first["implied_n"]), int(first["implied_k"])) == (expected["n"], expected["k"])
    assert float(first["low95"]) == pytest.approx(expected["low"]) and float(first["high95"]) == pytest.approx(
        expected["high"])
    assert {r["metric"] for r in intervals} == {"acc", "unchanged_all", "unchanged_vision_dependent",
                                                "unchanged_vision_irrelevant"}
    page = (out / "report.md").read_text()
    assert "## VizWiz: the official evaluation's breakdown" in page and "## MMBench-Video" in page
    assert "How much the paper's percentages can mean" in page


def test_the_demo_has_no_breakdown_tables(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, DEMO, demo_value)
    build_report(settings(DEMO, results), out)
    assert not list(out.glob("vizwiz_*")) and not list(out.glob("mmbench_*")) and not list(out.glob("paper_*"))


# ---------------------------------------------------------------------------------------------- figures, page, LaTeX


def legend_texts(fig) -> set[str]:
    return {text.get_text() for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if legend
            for text in legend.get_texts()}


def horizontal_lines_at(ax, y: float) -> list:
    return [line for line in ax.get_lines() if len(line.get_ydata()) == 2 and all(v == y for v in line.get_ydata())]


def test_figures_label_their_axes_and_keep_honest_scales(tmp_path):
    spec = Spec(DEMO.tables, (0, 1, 2), DEMO.modality)
    results = tmp_path / "results"
    fill(results, spec, lambda arm, seed: (50.0 + seed, 1.05 + 0.01 * seed, 0.9, 0.2 * seed, -0.1))
    write_gates(results, run_name(Arm("synth-video", "tiny-qwen2.5-vl", "attn", "moir", 0.1), 0), steps=9)
    collected = collect(settings(spec, results))
    rows = collected.rows

    fig = report.figure_mdi_aei(rows[1], tmp_path / "mdi_aei.png", with_reference=False)
    assert fig.get_size_inches()[0] == pytest.approx(report.TWO_COLUMNS)
    for ax, name in zip(fig.axes, ("MDI", "AEI")):
        assert ax.get_ylabel() == f"{name} (ratio, log scale)" and ax.get_yscale() == "log"
        assert horizontal_lines_at(ax, 1.0)  # y = 1, balanced
        low, high = ax.get_ylim()
        assert low <= 0.5 and high >= 2.0  # never zoomed into the noise around 1
        assert any(container.has_yerr for container in ax.containers)  # 95% intervals over the 3 seeds
    assert {"FT", "FT w/ MoIR (k'=0.1)", "base model", "balanced (1)"} <= legend_texts(fig)
    assert "95% interval over 3 seeds" in fig._suptitle.get_text()
    assert [tick.get_text() for tick in fig.axes[1].get_xticklabels()] == ["Attn", "MLP", "Proj."] * 2

    fig = report.figure_accuracy_rank(rows[1], tmp_path / "accuracy_rank.png", with_reference=False)
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy (%)", "Δ effective rank (dims)", "Δ effective rank (dims)"]
    assert fig.axes[0].get_ylim() == (0.0, 100.0)
    assert horizontal_lines_at(fig.axes[1], 0.0)

    fig = report.figure_ablation(rows[3], tmp_path / "ablation.png", with_reference=False, ft=rows[1][1])
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [0.05, 0.1, 0.15]  # only the k' that ran
        assert ax.get_xlabel() == "exchange ratio k'" and ax.get_ylabel()
    assert fig.axes[0].get_ylim() == (0.0, 100.0) and fig.axes[2].get_yscale() == "log"
    assert "synth-image (I+T), tiny-llava, LoRA on the attention layers (Attn)" in fig._suptitle.get_text()
    assert {"Rank ΔI", "Rank ΔT", "MDI", "AEI", "FT w/ MoIR at k'", "FT (no router)"} <= legend_texts(fig)

    fig = report.figure_gates(collected.gates, tmp_path / "gates.png")
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()  # one step axis for runs of 4 and of 9 steps
    assert fig.axes[0].get_xlim()[1] >= 9 and fig.axes[0].get_ylim() == (0.0, 1.0)
    assert fig.axes[0].get_xlabel() == "optimizer step" and fig.axes[0].get_ylabel().startswith("alpha")
    assert "synth-video / tiny-qwen2.5-vl / Attn" in legend_texts(fig)
    assert f"moved at most {report.gate_moves(collected.gates):.3g} from 0.5" in fig._suptitle.get_text()
    assert report.gate_moves(collected.gates) == pytest.approx(0.09)  # write_gates: 0.5 + 0.01 * step, 9 steps

    fig = report.figure_robustness(rows[2], tmp_path / "robustness.png", with_reference=False)
    assert fig.get_size_inches()[0] == pytest.approx(report.ONE_COLUMN)
    assert fig.axes[0].get_ylim() == (0.0, 100.0) and fig.axes[0].get_ylabel() == "unchanged predictions (%)"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][0] == "All\n(n=300)"

    for name in report.FIGURES:  # legible at print size: no text under 8 pt
        fig = {"mdi_aei.png": report.figure_mdi_aei, "accuracy_rank.png": report.figure_accuracy_rank,
               "ablation.png": report.figure_ablation, "robustness.png": report.figure_robustness}.get(name)
        if fig is None:
            continue
        drawn = fig(rows[{"ablation.png": 3, "robustness.png": 2}.get(name, 1)], tmp_path / name, with_reference=False)
        sizes = [text.get_fontsize() for text in drawn.findobj(matplotlib.text.Text) if text.get_text()]
        assert min(sizes) >= 8, name


def test_report_page_stands_alone(tmp_path):
    spec = Spec(DEMO.tables, (0, 1), DEMO.modality)
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, spec, lambda arm, seed: (50.0 + seed, 1.05, 0.9, 0.2, -0.1))
    build_report(settings(spec, results), out)
    page = (out / "report.md").read_text()
    for definition in ("**MDI** (Modality Dominance Index)", "**AEI** (Attention", "**Rank ΔI, Rank ΔT**",
                       "**Acc. (%)**", "**Unchanged (%)**", "**Base**", "|log MDI|"):
        assert definition in page, definition
    assert "**Table 2.** Robustness" in page and "**Table 3.** The ablation" in page
    assert page.count("synth-image (I+T), tiny-llava, LoRA on the attention layers (Attn)") >= 2  # Tables 2 and 3
    assert "Base (no fine-tuning)" in page
    assert "synth-image: 300 test questions, one question = 0.33 points" in page
    assert "Mean ± half-width of the 95% t-interval over 2 seeds." in page
    assert "50.50 ± 6.35" in page  # mean of 50 and 51, t(0.975, 1) * 0.707 / sqrt(2)
    assert "moved at most 0.04 from it" in page  # gates.png's caption: max |alpha - 0.5| of write_gates' 4 steps


def test_resolution_follows_the_number_of_evaluated_questions(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, DEMO, demo_value)
    for path in (results / "eval").rglob("metrics.json"):
        if "synth-video" in str(path):
            metrics = json.loads(path.read_text())
            if "accuracy" in metrics:
                metrics["accuracy"]["n"] = 80
                path.write_text(json.dumps(metrics))
    tables(DEMO, results, out)
    text = (out / "table1.md").read_text()
    assert "synth-image: 300 test questions, one question = 0.33 points; synth-video: 80 test questions, one " \
           "question = 1.25 points." in text


LATEX_ROW = re.compile(r"^(?!%|\\)(.*) \\\\$")


@pytest.mark.parametrize("table", [1, 2, 3])
def test_latex_tables_are_paste_ready(tmp_path, table):
    spec = Spec(DEMO.tables, (0, 1), DEMO.modality)
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, spec, demo_value)
    tables(spec, results, out)
    tex = (out / f"table{table}.tex").read_text()
    lines = tex.splitlines()
    environment = "table*" if table == 1 else "table"
    assert lines[1] == rf"\begin{{{environment}}}[t]" and lines[-1] == rf"\end{{{environment}}}"
    caption = next(line for line in lines if line.startswith(r"\caption{"))
    assert not caption.startswith(r"\caption{Table")  # LaTeX numbers the tables itself
    assert rf"\label{{tab:moir-table{table}}}" in lines
    assert [tex.count(rule) for rule in (r"\toprule", r"\midrule", r"\bottomrule")] == [1, 1, 1]
    spec_text = re.search(r"\\begin\{tabular\}\{@\{\}(\w+)@\{\}\}", tex).group(1)
    rows = [match.group(1) for line in lines if (match := LATEX_ROW.match(line))]
    assert all(row.count("&") == len(spec_text) - 1 for row in rows)
    assert spec_text.endswith("r" * (3 if table == 2 else 5))  # the metric columns are right-aligned
    assert not re.search(r"(?<!\\)[_%#&](?![^$]*\$)", "".join(row.replace("&", "") for row in rows) + caption)
    assert tex.count("{") == tex.count("}")
    if shutil.which("pdflatex"):  # compile it where a LaTeX engine is installed
        (tmp_path / "doc.tex").write_text(
            "\\documentclass[twocolumn]{article}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n"
            f"\\usepackage{{graphicx}}\n\\begin{{document}}\n{tex}\nTable~\\ref{{tab:moir-table{table}}}.\n"
            "\\end{document}\n")
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:]
        assert "Overfull \\hbox" not in (tmp_path / "doc.log").read_text()


# ---------------------------------------------------------------------------------------------- the study sections


def write_predictions(results: Path, run: str, correct: list[bool]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = results / "eval" / run / "clean" / "predictions.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [f"q{i}" for i in range(len(correct))], "correct": pa.array(correct)}), path)
    return str(path)


def test_comparisons_table4_router_effect_and_validity(tmp_path):
    """Hand-made predictions: on synth-image/attn MoIR is right on 10 questions that FT gets wrong (and never the
    reverse), so McNemar's p is 2 / 2^10 and, Holm over Table 1's 6 comparisons, 6 * 2 / 2^10 survives; every
    other pair answers alike (difference 0, p = 1)."""
    import dataclasses

    tables4 = dataclasses.replace(DEMO.tables, table4=("synth-image", "tiny-llava", "attn"),
                                  variants=("paper-literal", "default"))
    spec = Spec(tables4, (0,), DEMO.modality)
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, spec, demo_value)
    base = settings(spec, results)
    evaluations, gates, predictions = dict(base.evaluations), dict(base.gates), {}
    arms4 = tables4.table4_arms()
    assert [arm.label for arm in arms4] == ["ft", "moir-k0.1+paper-literal", "moir-k0.1"]
    follow = {}
    for index, arm in enumerate(dict.fromkeys(tables4.table1() + arms4)):  # FT and default: Table 1's runs
        name = run_name(arm, 0)
        metrics = clean_metrics(*demo_value(arm, 0))
        follow[name] = 10.0 * index  # rises with MDI (demo_value's MDI rises along the table too, mostly)
        metrics["summary"].update(hint_follow=follow[name], acc_hint_right=70.0, acc_hint_wrong=30.0)
        if arm.method == "moir":
            metrics["summary"].update(router_tv=0.01, router_changed=2.0)
            metrics["router_effect"] = {
                "tv_mean": 0.01, "tv_max": 0.2, "changed_share": 2.0, "directions": {
                    "a": {"n_routed": 20, "n_channels_selected": 3, "alpha_shift_selected_mean": 0.01,
                          "alpha_shift_selected_max": 0.02, "alpha_shift_max": 0.03,
                          "selection_counts": [0, 20, 15, 5], "alpha": [0.5, 0.52, 0.49, 0.5]},
                    "b": {"n_routed": 20, "n_channels_selected": 1, "alpha_shift_selected_mean": 0.0,
                          "alpha_shift_selected_max": 0.0, "alpha_shift_max": 0.0,
                          "selection_counts": [20, 0, 0, 0]}}}
            gates[name] = str(results / "runs" / name / "train_metrics.jsonl")
            write_gates(results, name)
        write(results, name, "clean", metrics)
        evaluations[f"{name}/clean"] = str(results / "eval" / name / "clean" / "metrics.json")
        better = arm.method == "moir" and arm.placement == "attn" and arm.dataset == "synth-image" \
            and arm.variant == ""
        predictions[f"{name}/clean"] = write_predictions(results, name, [True] * 10 + [better] * 10)
    build_report(dataclasses.replace(base, evaluations=evaluations, gates=gates, predictions=predictions), out)

    found = read_csv(out / "comparisons.csv")
    assert [(r["table"], r["placement"], r["arm"]) for r in found] == [
        *[("1", p, "moir-k0.1") for p in ("attn", "mlp", "proj")] * 2,
        ("4", "attn", "moir-k0.1+paper-literal"), ("4", "attn", "moir-k0.1")]
    by = {(r["table"], r["dataset"], r["placement"], r["arm"]): r for r in found}
    winner = by[("1", "synth-image", "attn", "moir-k0.1")]
    assert float(winner["diff"]) == pytest.approx(50.0) and 0 < float(winner["diff_low"]) < 50 < float(
        winner["diff_high"]) <= 100
    assert float(winner["p_mcnemar"]) == pytest.approx(2 / 1024)
    assert float(winner["p_holm"]) == pytest.approx(6 * 2 / 1024) and winner["survives"] == "true"
    assert (winner["moir_only"], winner["ft_only"], winner["n_questions"]) == ("10", "0", "20")
    for key, row in by.items():
        if row is not winner and key[0] == "1":
            assert (float(row["diff"]), float(row["p_mcnemar"]), float(row["p_holm"]), row["survives"]) == (
                0.0, 1.0, 1.0, "false")
    table4 = by[("4", "synth-image", "attn", "moir-k0.1")]  # default vs FT: the winner again, Holm over 2
    assert float(table4["p_holm"]) == pytest.approx(2 * 2 / 1024) and table4["survives"] == "true"

    table1 = [row for row in read_csv(out / "table1.csv") if row["method"] != "base"]  # the fine-tuned arms
    assert [r["survives"] for r in table1[:2]] == ["", "true"] and table1[3]["survives"] == "false"
    assert float(table1[0]["hint_follow"]) == 0.0 and float(table1[1]["acc_hint_wrong"]) == 30.0
    assert "FT w/ MoIR (k'=0.1) *" in (out / "table1.md").read_text()
    rows4 = read_csv(out / "table4.csv")
    assert [r["variant"] for r in rows4] == ["ft", "paper-literal", "default"]
    assert rows4[0]["diff"] == "" and float(rows4[2]["diff"]) == pytest.approx(50.0)
    assert "| default * |" in (out / "table4.md").read_text()

    effect = read_csv(out / "router_effect.csv")
    assert len(effect) == 6 + 2 + 1  # Table 1's MoIR runs, Table 3's other k', Table 4's paper-literal
    first = effect[0]
    assert (float(first["tv_mean"]), float(first["changed_share"]), float(first["alpha_shift_selected_max_a"]),
            first["top_channels_a"], first["top_channels_b"]) == (0.01, 2.0, 0.02, "1:20 2:15 3:5", "0:20")
    assert effect[6]["tv_mean"] == ""  # Table 3's runs were evaluated without the section: empty, not zero
    channels = read_csv(out / "router_channels.csv")
    assert [(c["channel"], c["count"], float(c["share"]), float(c["alpha"])) for c in channels[:4]] == [
        ("0", "0", 0.0, 0.5), ("1", "20", 0.5, 0.52), ("2", "15", 0.375, 0.49), ("3", "5", 0.125, 0.5)]
    assert channels[4]["alpha"] == ""  # direction b recorded no alpha: empty

    page = (out / "report.md").read_text()
    assert "Is MDI/AEI a valid measure?** Across the suite's 13 evaluated runs" in page
    # ... and within each dataset (synth-image: Table 1's six runs and Table 4's variant; synth-video: six): here
    # the hint-follow rate rises with MDI inside each dataset while the pooled runs mix the datasets' levels, so
    # the pooled rho is negative and both within-dataset rhos positive (the confounding the split exposes)
    import re

    pooled = float(re.search(r"ρ\(MDI, hint-follow\) = ([+-][0-9.]+)", page).group(1))
    within = {name: float(rho) for name, rho in re.findall(r"(synth-\w+) \(\d+ runs\): ρ\(MDI\) = ([+-][0-9.]+)", page)}
    assert "synth-image (7 runs)" in page and "synth-video (6 runs)" in page
    assert pooled < 0 < min(within.values()) and set(within) == {"synth-image", "synth-video"}
    assert "Survives: Holm p <= 0.05" in page and "Table 4" in page and "Router diagnostics" in page
    assert (out / "validity.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "gates_selected.png").read_bytes().startswith(PNG_MAGIC)


def test_comparisons_need_the_same_questions_in_both_arms(tmp_path):
    import dataclasses

    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, DEMO, demo_value)
    base = settings(DEMO, results)
    predictions = {}
    for arm in DEMO.tables.table1():
        name = run_name(arm, 0)
        predictions[f"{name}/clean"] = write_predictions(results, name, [True] * (5 if arm.method == "ft" else 6))
    with pytest.raises(ReportError, match="questions differ"):
        build_report(dataclasses.replace(base, predictions=predictions), out)
    del predictions[next(iter(predictions))]
    with pytest.raises(ReportError, match="no predictions file was passed"):
        build_report(dataclasses.replace(base, predictions=predictions), out)


def test_base_reading_tabulates_each_base_per_question_type_and_hint(tmp_path):
    """base_reading.csv: per base, question type and protocol (and all protocols), accuracy with the hint right
    and wrong, from the base's clean evaluation's per-category accuracy; no file when no dataset labels hints."""
    results, out = tmp_path / "results", tmp_path / "report"
    fill(results, DEMO, demo_value)
    by_category = {  # synth-image's base: reads colour, follows the hint on shape (multiple choice only)
        "multiple_choice": {"colour:hint-right": {"n": 10, "accuracy": 90.0}, "colour:hint-wrong": {"n": 10, "accuracy": 80.0},
                            "shape:hint-right": {"n": 4, "accuracy": 100.0}, "shape:hint-wrong": {"n": 4, "accuracy": 0.0},
                            "other": {"n": 3, "accuracy": 100.0}},
        "short_answer": {"colour:hint-right": {"n": 10, "accuracy": 70.0}, "colour:hint-wrong": {"n": 30, "accuracy": 60.0}},
    }
    path = results / "eval" / base_name("synth-image", "tiny-llava") / "clean" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["accuracy"]["by_protocol"] = {p: {"accuracy": 50.0, "by_category": c} for p, c in by_category.items()}
    path.write_text(json.dumps(metrics))
    build_report(settings(DEMO, results), out)
    rows = read_csv(out / "base_reading.csv")
    assert list(rows[0]) == ["dataset", "model", "question_type", "protocol", "n", "n_hint_right", "acc_hint_right",
                             "n_hint_wrong", "acc_hint_wrong"]
    found = {(r["question_type"], r["protocol"]): r for r in rows}
    assert [key for key in found] == [("colour", "all"), ("colour", "multiple_choice"), ("colour", "short_answer"),
                                      ("shape", "all"), ("shape", "multiple_choice")]  # "other": no hint, left out
    colour = found[("colour", "all")]
    assert (colour["dataset"], colour["model"], colour["n"], colour["n_hint_right"], colour["n_hint_wrong"]) == (
        "synth-image", "tiny-llava", "60", "20", "40")
    assert float(colour["acc_hint_right"]) == pytest.approx(80.0)  # (9 + 7) / 20
    assert float(colour["acc_hint_wrong"]) == pytest.approx(65.0)  # (8 + 18) / 40
    assert float(found[("shape", "multiple_choice")]["acc_hint_wrong"]) == 0.0

    del metrics["accuracy"]["by_protocol"]
    path.write_text(json.dumps(metrics))
    with pytest.raises(ReportError, match=r"metrics.json: missing field 'accuracy.by_protocol'"):
        report.base_reading_frame(settings(DEMO, results), DEMO.tables)
    fill(results, DEMO, demo_value)  # no labelled hint anywhere: no table (and build_report writes no file)
    assert report.base_reading_frame(settings(DEMO, results), DEMO.tables) is None
