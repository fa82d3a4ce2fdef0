"""The report's breakdowns beside Tables 1-3: what the official VizWiz and MMBench-Video evaluations report, and
how much each of the paper's percentages can mean.

- vizwiz_breakdown.{md,csv}: for each clean evaluation of a VizWiz run, accuracy overall and per answer type and
  the unanswerability average precision and F1 (`moir.evaluate.scoring.vizwiz_metrics`), all in percent.
- mmbench_video_breakdown.{md,csv}: for each clean evaluation of an MMBench-Video run, the share judged correct
  (at the threshold it records), VLMEvalKit's mean score "all" and "valid", the failed judgements, and the
  coarse-dimension ratings ("all"); mmbench_video_dimensions.csv holds every dimension, coarse and fine, all and
  valid, one row per (evaluation, level, dimension).
- paper_intervals.{md,csv}: for each percentage of the paper's tables (accuracy, unchanged-prediction rates), the
  smallest number of questions n <= 100 for which some k/n rounds to it (`moir.metrics.implied_sample_size`) and
  the 95% Wilson interval of k/n: how far apart two of the paper's numbers must be to differ, if that n is real.

`breakdown_sections` writes these files and returns their Markdown sections for report.md; a table with no row
(e.g. the demo, which has neither benchmark) is neither written nor shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from moir.metrics import MMBENCH_VIDEO_DIMENSIONS, paper_percentage_interval
from moir.plan import ReportSettings
from moir.storage import write_text_atomic

VIZWIZ_TYPES = ("yes/no", "number", "other", "unanswerable")
COARSE = tuple(MMBENCH_VIDEO_DIMENSIONS)
INTERVAL_COLUMNS = {"tables": ("acc",),
                    "robustness": ("unchanged_all", "unchanged_vision_dependent", "unchanged_vision_irrelevant")}
MAX_IMPLIED_N = 100


class BreakdownError(ValueError):
    """A metrics file lacks a field the breakdown needs; the message names the file and the field."""


def _get(metrics: Mapping, dotted: str, source: str):
    value = metrics
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise BreakdownError(f"{source}: missing field {dotted!r}")
        value = value[key]
    return value


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def vizwiz_rows(evaluations: Mapping[str, Mapping]) -> list[dict]:
    """One row per evaluation (key -> its metrics.json) that scored VizWiz rows."""
    rows = []
    for key, metrics in evaluations.items():
        entry = metrics.get("accuracy", {}).get("by_protocol", {}).get("vizwiz")
        if entry is None:
            continue
        by_type = _get(entry, "by_answer_type", key)
        row = {"evaluation": key, "n": entry["n"], "accuracy": entry["accuracy"]}
        for answer_type in VIZWIZ_TYPES:
            row[f"acc_{answer_type}"] = by_type.get(answer_type, {}).get("accuracy")
        unanswerability = _get(entry, "unanswerability", key)
        row["unanswerable_ap"] = unanswerability["average_precision"]
        row["unanswerable_f1"] = unanswerability["f1"]
        rows.append(row)
    return rows


def mmbench_video_rows(evaluations: Mapping[str, Mapping]) -> tuple[list[dict], list[dict]]:
    """(one summary row per evaluation that used the judge, one row per (evaluation, level, dimension))."""
    rows, dimension_rows = [], []
    for key, metrics in evaluations.items():
        entry = metrics.get("accuracy", {}).get("by_protocol", {}).get("open_ended")
        if entry is None:
            continue
        row = {"evaluation": key, "n": entry["n"], "threshold": _get(entry, "judge_correct_threshold", key),
               "judged_correct": entry["accuracy"], "mean_score_all": entry["mean_score"],
               "mean_score_valid": entry["mean_score_valid"], "n_failed": entry["n_failed"]}
        dimensions = entry.get("dimensions")
        for name in COARSE:
            row[name] = dimensions["coarse_all"].get(name) if dimensions else None
        rows.append(row)
        if dimensions:
            for level in ("coarse", "fine"):
                for name, value in dimensions[f"{level}_all"].items():
                    dimension_rows.append({"evaluation": key, "level": level, "dimension": name, "all": value,
                                           "valid": dimensions[f"{level}_valid"].get(name)})
    return rows, dimension_rows


def interval_rows(reference: Mapping[str, str | None]) -> list[dict]:
    """One row per percentage of the paper's reference CSVs ({"tables": path, "robustness": path})."""
    rows = []
    for kind, path in reference.items():
        if path is None:
            continue
        frame = pl.read_csv(path, infer_schema=False)
        for line, record in enumerate(frame.iter_rows(named=True), start=2):
            for column in INTERVAL_COLUMNS[kind]:
                text = record.get(column)
                if not text:
                    continue
                try:
                    value = float(text)
                except ValueError as error:
                    raise BreakdownError(f"{path}: line {line} field {column!r} is {text!r}, not a number") from error
                interval = paper_percentage_interval(value, max_n=MAX_IMPLIED_N)
                rows.append({
                    "table": int(record["table"]), "dataset": record["dataset"], "model": record["model"],
                    "placement": record["placement"], "method": record["method"],
                    "k_ratio": record.get("k_ratio") or None, "metric": column, "paper": value,
                    "implied_n": interval["n"] if interval else None, "implied_k": interval["k"] if interval else None,
                    "low95": interval["low"] if interval else None, "high95": interval["high"] if interval else None,
                })
    return rows


def _markdown(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write(rows: Sequence[Mapping], columns: Sequence[str], out: Path, name: str) -> str:
    frame = pl.DataFrame([{c: row.get(c) for c in columns} for row in rows], infer_schema_length=None)
    write_text_atomic(out / f"{name}.csv", frame.write_csv(null_value="", line_terminator="\n"))
    text = _markdown(rows, columns)
    write_text_atomic(out / f"{name}.md", text)
    return text


def read_evaluations(settings: ReportSettings) -> dict[str, dict]:
    """The clean evaluations' metrics (key -> metrics.json), read as the report reads them."""
    from moir.report.build import read_json  # noqa: PLC0415  (build imports this module)

    return {key: read_json(Path(path)) for key, path in settings.evaluations.items() if key.endswith("/clean")}


def breakdown_sections(settings: ReportSettings, out: Path) -> list[str]:
    """Write the breakdown tables into `out` and return their report.md sections (module docstring)."""
    evaluations = read_evaluations(settings)
    sections = []
    vizwiz = vizwiz_rows(evaluations)
    if vizwiz:
        columns = ["evaluation", "n", "accuracy", *(f"acc_{t}" for t in VIZWIZ_TYPES), "unanswerable_ap",
                   "unanswerable_f1"]
        sections.append("## VizWiz: the official evaluation's breakdown\n\nAccuracy (official VizWiz VQAEval) overall "
                        "and per answer type; unanswerability average precision and F1 (percent).\n\n"
                        + _write(vizwiz, columns, out, "vizwiz_breakdown"))
    mmbench, dimensions = mmbench_video_rows(evaluations)
    if mmbench:
        columns = ["evaluation", "n", "threshold", "judged_correct", "mean_score_all", "mean_score_valid", "n_failed",
                   *COARSE]
        sections.append("## MMBench-Video: judged correct and VLMEvalKit's ratings\n\n`judged_correct`: percent of "
                        "answers with judge score >= threshold (the paper's unit); mean scores 0-3 as VLMEvalKit "
                        "reports them ('all': a failed judgement counts 0; 'valid': left out); coarse dimensions: "
                        "'all' means (every dimension, fine ones too, in mmbench_video_dimensions.csv).\n\n"
                        + _write(mmbench, columns, out, "mmbench_video_breakdown"))
        if dimensions:
            frame = pl.DataFrame(dimensions, infer_schema_length=None)
            write_text_atomic(out / "mmbench_video_dimensions.csv", frame.write_csv(null_value="",
                                                                                     line_terminator="\n"))
    intervals = interval_rows({"tables": settings.reference_tables, "robustness": settings.reference_robustness})
    if intervals:
        columns = ["table", "dataset", "model", "placement", "method", "k_ratio", "metric", "paper", "implied_n",
                   "implied_k", "low95", "high95"]
        sections.append(f"## How much the paper's percentages can mean\n\nFor each percentage of the paper: the "
                        f"smallest number of questions n <= {MAX_IMPLIED_N} for which some k/n rounds to it, and the "
                        "95% Wilson interval of k/n in percent (– when no such n exists).\n\n"
                        + _write(intervals, columns, out, "paper_intervals"))
    return sections
