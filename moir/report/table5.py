"""Table 5: visual-token compression (moir.compression) against the uncompressed arms, at one setting.

Rows: the base model without and with compression (training-free, one row per keep ratio), FT and MoIR (Table
1's k') without compression, then FT and MoIR trained (and evaluated) with each keep ratio. Columns: accuracy,
MDI, AEI, the reliance columns where the dataset has hints (accuracy with the hint right / wrong, hint-follow
rate), the visual tokens the language model saw per example (the analysis pass's count), the median time per
training step relative to the uncompressed FT run's (train_metrics.jsonl of each seed, averaged over seeds), and
two paired differences against the row's reference (FT for a trained arm, the uncompressed base for the
training-free arm), each the mean with a 95% paired bootstrap interval over questions and seeds
(`moir.metrics.stats.paired_bootstrap`, as comparisons.csv): accuracy in points, and MDI per question (its
attention masses averaged over all layers, as the evaluation's MDI; questions with an infinite or undefined MDI in
any evaluation of the pair are left out, and counted). Metric cells are means over seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from moir.metrics.dominance import modality_dominance
from moir.metrics.stats import paired_bootstrap
from moir.plan import Plan, ReportSettings, Tables, format_ratio
from moir.report import study

N_RESAMPLES = study.N_RESAMPLES
BOOTSTRAP_SEED = study.BOOTSTRAP_SEED
METRICS = ("acc", "mdi", "aei", "acc_hint_right", "acc_hint_wrong", "hint_follow", "visual_tokens")
COLUMNS = (  # (key, Markdown header, LaTeX header)
    ("acc", "Acc. (%)", r"Acc. (\%)"),
    ("mdi", "MDI", "MDI"),
    ("aei", "AEI", "AEI"),
    ("acc_hint_right", "Acc. hint right", "Acc. hint right"),
    ("acc_hint_wrong", "Acc. hint wrong", "Acc. hint wrong"),
    ("hint_follow", "Hint follow", "Hint follow"),
    ("visual_tokens", "Visual tokens", "Visual tokens"),
    ("step_time_rel", "Step time / FT", "Step time / FT"),
)


class Table5Error(ValueError):
    """An input of Table 5 is missing or malformed; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------- reading


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise Table5Error(f"{path}: not found (has this evaluation run?)") from error
    except json.JSONDecodeError as error:
        raise Table5Error(f"{path}: not valid JSON ({error})") from error


def summary_values(metrics: Mapping, source: Path) -> dict[str, float | None]:
    """The Table 5 numbers of one clean evaluation's metrics.json (`summary`)."""
    summary = metrics.get("summary")
    if not isinstance(summary, Mapping) or "acc" not in summary:
        raise Table5Error(f"{source}: missing field 'summary.acc'")
    out = {}
    for key in METRICS:
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise Table5Error(f"{source}: field 'summary.{key}' is {value!r}, expected a number")
        out[key] = None if value is None else float(value)
    return out


def median_step_time(path: Path) -> float:
    """The median `step_time_s` of a run's optimizer steps (train_metrics.jsonl)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as error:
        raise Table5Error(f"{path}: not found (has this run finished?)") from error
    times = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise Table5Error(f"{path}: line {number} is not valid JSON ({error})") from error
        if record.get("kind") == "step":
            value = record.get("step_time_s")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise Table5Error(f"{path}: line {number}: field 'step_time_s' is {value!r}, expected a number")
            times.append(float(value))
    if not times:
        raise Table5Error(f"{path}: no optimizer step recorded")
    return statistics.median(times)


def question_mdi(path: Path) -> dict[str, float]:
    """id -> MDI of each analysed question of a predictions.parquet (masses averaged over all layers; questions
    without text, visual or answer tokens, or with no visual attention, have none)."""
    try:
        table = pq.read_table(path, columns=["id", "n_text", "n_visual", "attn_text", "attn_visual"])
    except (FileNotFoundError, pa.ArrowInvalid, OSError, KeyError) as error:
        raise Table5Error(f"{path}: not a predictions table with the analysis columns ({error})") from error
    out = {}
    for row in table.to_pylist():
        text, visual = row["attn_text"], row["attn_visual"]
        if not text or not visual or not row["n_text"] or not row["n_visual"]:
            continue
        a_text, a_visual = statistics.fmean(text), statistics.fmean(visual)
        if not (math.isfinite(a_text) and math.isfinite(a_visual)) or a_text + a_visual <= 0 or a_visual == 0:
            continue
        out[row["id"]] = modality_dominance(a_text, row["n_text"], a_visual, row["n_visual"])[0]
    return out


def mdi_change(reference: Sequence[Path], arm: Sequence[Path]) -> dict:
    """Arm - reference in per-question MDI: the mean with a 95% paired bootstrap interval over the questions that
    have an MDI in every evaluation of both (seed s of the arm paired with seed s of the reference; a single
    reference evaluation, the base model's, is paired with every seed)."""
    if len(reference) == 1 and len(arm) > 1:
        reference = list(reference) * len(arm)
    refs, arms = [question_mdi(p) for p in reference], [question_mdi(p) for p in arm]
    common = set.intersection(*(set(m) for m in refs + arms))
    everywhere = set.union(*(set(m) for m in refs + arms))
    if not common:
        return {"mdi_diff": None, "mdi_diff_low": None, "mdi_diff_high": None, "mdi_n": 0,
                "mdi_left_out": len(everywhere)}
    questions = sorted(common)
    a = np.array([[m[q] for q in questions] for m in arms])
    b = np.array([[m[q] for q in questions] for m in refs])
    found = paired_bootstrap(a, b, n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED)
    return {"mdi_diff": found["mean_diff"], "mdi_diff_low": found["low"], "mdi_diff_high": found["high"],
            "mdi_n": len(questions), "mdi_left_out": len(everywhere) - len(questions)}


def accuracy_change(reference: Sequence[Path], arm: Sequence[Path]) -> dict:
    """Arm - reference in accuracy points with its paired bootstrap interval (study.compare's)."""
    if len(reference) == 1 and len(arm) > 1:
        reference = list(reference) * len(arm)
    try:
        found = study.compare(*study.paired_outcomes(reference, arm))
    except study.StudyError as error:
        raise Table5Error(str(error)) from error
    return {"acc_diff": found["diff"], "acc_diff_low": found["diff_low"], "acc_diff_high": found["diff_high"]}


# ---------------------------------------------------------------------------------------------- the table


def rows_spec(tables: Tables, seeds: Sequence[int]) -> list[dict]:
    """Table 5's rows in order: label, keep ratio, the evaluations ("<name>/clean", one per seed) averaged into
    the row, the reference row's label, and the runs whose step times the row shows."""
    dataset, model, _ = tables.table5
    arms = tables.table5_arms()
    base = f"{dataset}__{model}__base"
    rows = [{"arm": "base", "keep_ratio": None, "evaluations": [base], "reference": None, "runs": []}]
    rows += [{"arm": f"base+keep{format_ratio(r)}", "keep_ratio": r,
              "evaluations": [Plan.compressed_base_name(dataset, model, r)], "reference": "base", "runs": []}
             for r in tables.keep_ratios]
    ft_label = arms[0].label
    for arm in arms:
        names = [arm.run(seed).name for seed in seeds]
        rows.append({"arm": arm.label, "keep_ratio": arm.keep_ratio, "evaluations": names,
                     "reference": None if arm.label == ft_label else ft_label, "runs": names})
    return rows


def table5_frame(settings: ReportSettings, tables: Tables) -> pl.DataFrame:
    """One row per arm of Table 5 (module docstring)."""
    dataset, model, placement = tables.table5
    specs = rows_spec(tables, settings.seeds)
    by_label = {spec["arm"]: spec for spec in specs}
    ft_runs = specs[len(tables.keep_ratios) + 1]["runs"]
    train_metrics = settings.train_metrics or {}

    def step_time(names: Sequence[str]) -> float:
        missing = [name for name in names if name not in train_metrics]
        if missing:
            raise Table5Error(f"no train_metrics.jsonl was passed for the run {missing[0]} (settings: train_metrics)")
        return statistics.fmean(median_step_time(Path(train_metrics[name])) for name in names)

    def path(name: str, table: Mapping[str, str], what: str) -> Path:
        key = f"{name}/clean"
        if key not in table:
            raise Table5Error(f"no {what} file was passed for the evaluation {key} (settings: {what})")
        return Path(table[key])

    ft_time = step_time(ft_runs)
    records = []
    for spec in specs:
        values = [summary_values(read_json(p), p) for p in
                  (path(name, settings.evaluations, "evaluations") for name in spec["evaluations"])]
        record = {"dataset": dataset, "model": model, "placement": placement, "arm": spec["arm"],
                  "keep_ratio": spec["keep_ratio"], "n_seeds": len(values)}
        for key in METRICS:
            present = [v[key] for v in values if v[key] is not None]
            record[key] = statistics.fmean(present) if len(present) == len(values) else None
        record["step_time_rel"] = step_time(spec["runs"]) / ft_time if spec["runs"] else None
        record["reference"] = spec["reference"]
        if spec["reference"] is not None and settings.predictions:
            ref = by_label[spec["reference"]]["evaluations"]
            ref_paths = [path(name, settings.predictions, "predictions") for name in ref]
            arm_paths = [path(name, settings.predictions, "predictions") for name in spec["evaluations"]]
            record.update(accuracy_change(ref_paths, arm_paths))
            record.update(mdi_change(ref_paths, arm_paths))
        records.append(record)
    schema = {"dataset": pl.String, "model": pl.String, "placement": pl.String, "arm": pl.String,
              "keep_ratio": pl.Float64, "n_seeds": pl.Int64, **{key: pl.Float64 for key in METRICS},
              "step_time_rel": pl.Float64, "reference": pl.String, "acc_diff": pl.Float64,
              "acc_diff_low": pl.Float64, "acc_diff_high": pl.Float64, "mdi_diff": pl.Float64,
              "mdi_diff_low": pl.Float64, "mdi_diff_high": pl.Float64, "mdi_n": pl.Int64, "mdi_left_out": pl.Int64}
    return pl.DataFrame(records, schema=schema)


def number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


def difference(row: Mapping, key: str) -> str:
    if row.get(key) is None:
        return "–"
    return f"{row[key]:+.2f} [{row[f'{key}_low']:+.2f}, {row[f'{key}_high']:+.2f}]"


def layout(frame: pl.DataFrame, *, latex: bool = False) -> tuple[list[str], list[list[str]], str]:
    """(headers, body, caption) of Table 5 for Markdown (or LaTeX headers)."""
    hinted = any(row["hint_follow"] is not None for row in frame.iter_rows(named=True))
    columns = [c for c in COLUMNS if hinted or c[0] not in ("acc_hint_right", "acc_hint_wrong", "hint_follow")]
    headers = (["Arm", "Keep"] + [c[2] if latex else c[1] for c in columns]
               + (["vs", r"$\Delta$ acc. [95\% CI]", r"$\Delta$ MDI [95\% CI]"] if latex
                  else ["vs", "Δ acc. [95% CI]", "Δ MDI [95% CI]"]))
    body = []
    for row in frame.iter_rows(named=True):
        body.append([row["arm"], "all" if row["keep_ratio"] is None else format_ratio(row["keep_ratio"])]
                    + [number(row[key], 1 if key == "visual_tokens" else 2) for key, _, _ in columns]
                    + [row["reference"] or "–", difference(row, "acc_diff"), difference(row, "mdi_diff")])
    first = frame.row(0, named=True)
    caption = (f"Table 5: visual-token compression (FasterVLM-style, moir.compression) at {first['dataset']}, "
               f"{first['model']}, {first['placement']}: the top share (Keep) of each image's or frame's visual "
               "tokens by the vision encoder's importance score; means over seeds. Step time: median seconds per "
               "training step over the uncompressed FT run's. Δ: the row minus its reference (vs), mean with a "
               f"95% paired bootstrap interval over questions and seeds ({N_RESAMPLES} resamples); Δ MDI per "
               "question.")
    return headers, body, caption
