"""moir.report on hand-made evaluation outputs: the tables hold exactly the numbers of the metrics files (and the
paper's beside them), seeds are averaged, figures are written, and bad inputs fail naming the file and field."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from moir.plan import Arm, ReportSettings, Tables
from moir.report import build as report
from moir.report.build import ReportError, build_report, collect, write_tables

REFERENCE = Path(report.__file__).parents[1] / "reference"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def clean_metrics(acc, mdi, aei, delta_image, delta_text, *, acc_img=None, judge=None):
    """A clean evaluation's metrics.json as moir.evaluate writes it (the fields the report reads)."""
    by_protocol = {}
    if acc_img is not None:
        by_protocol["multiple_choice"] = {"accuracy": acc, "image_subset": {"n": 10, "accuracy": acc_img}}
    if judge is not None:
        by_protocol["open_ended"] = {"accuracy": 100 * judge / 3, "mean_score": judge}
    return {
        "mode": "clean",
        "accuracy": {"value": acc, "by_protocol": by_protocol},
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
                                         "unchanged_vision_irrelevant": irrelevant}}


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
    assert len(table1) == 2 * 3 * 2
    for row in table1:
        ratio = float(row["k_ratio"]) if row["k_ratio"] else None
        arm = Arm(row["dataset"], row["model"], row["placement"], row["method"], ratio)
        acc, mdi, aei, d_image, d_text = demo_value(arm, 0)
        assert float(row["acc"]) == pytest.approx(acc)
        assert float(row["mdi"]) == pytest.approx(mdi)
        assert float(row["mdi_late"]) == pytest.approx(mdi + 3)
        assert float(row["aei"]) == pytest.approx(aei)
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
    latex = (out / "table3.tex").read_text()
    assert r"\begin{tabular}" in latex and r"\bottomrule" in latex and latex.count(r"\\") == 1 + 3
    assert rows[1][1]["method"] == "moir"


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
    row = read_csv(out / "table1.csv")[0]
    assert float(row["acc"]) == pytest.approx(42.0)  # mean of 40, 42, 44
    assert float(row["acc_std"]) == pytest.approx(2.0)  # sample standard deviation
    assert float(row["rank_delta_image"]) == pytest.approx(1.0) and float(row["rank_delta_image_std"]) == pytest.approx(1.0)
    assert float(row["mdi"]) == 5.0 and float(row["mdi_std"]) == 0.0
    assert row["n_seeds"] == "3"
    assert float(row["acc_ci95"]) == pytest.approx(4.303 * 2.0 / math.sqrt(3))  # t(0.975, 2 dof) * s / sqrt(n)
    assert "42.00 ± 2.00" in (out / "table1.md").read_text()


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
    table1 = read_csv(out / "table1.csv")
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

    table1 = read_csv(out / "table1.csv")
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
