"""The report: the paper's Tables 1-3 as Markdown, CSV and LaTeX, and its figures, from the pipeline's metrics.

The last stage of the DAG. It reads what the evaluation and training stages wrote and lays it out as the paper
does, so a reader compares the two side by side:

- Table 1: accuracy, effective-rank deltas (image/video, text), MDI and AEI for every (dataset, model) pair,
  LoRA placement and arm (FT, FT w/ MoIR at k'), from each run's clean evaluation.
- Table 2: robustness, the rate of unchanged predictions when the images become noise (all questions,
  vision-dependent, vision-irrelevant), FT against MoIR, from the noise evaluation.
- Table 3: the k' ablation, Table 1's columns for MoIR at each k'.

With several seeds a cell is the mean and the CSV also holds the sample standard deviation (`<metric>_std`) and
the half-width of the mean's 95% t-interval (`<metric>_ci95`); the tabular work is done with polars. When reference
tables are given (the `paper` suite), every cell also shows the paper's number: in the CSV as `<metric>_paper`,
in Markdown and LaTeX in parentheses after ours. Figures (PNG, matplotlib Agg): MDI/AEI per arm, accuracy and
rank deltas per arm, the k' ablation curves, the router gates over training, and the robustness bars.

The report rebuilds no path and no grid: the arms come from moir.plan (`Tables`, the same grid the workflow
runs), and the files it reads come from the `report` rule as `--settings` (moir.plan.ReportSettings: the table
layout, the seeds, each dataset's modality, "<run>/<mode>" -> metrics.json, MoIR run -> train_metrics.jsonl, the
paper's reference tables on the paper suite).

Usage (the `report` rule):

    python -m moir.report --settings "$(cat settings.json)" --out results/demo/report

Writes into --out: table1/2/3.{md,csv,tex}, mdi_aei.png, accuracy_rank.png, ablation.png, gates.png,
robustness.png and report.md (the tables and figures on one page). A missing or malformed input stops the report
with an error naming the file (and the field); nothing is left half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from moir.settings import json_object  # noqa: E402
from moir.plan import Arm, ReportSettings, Tables, format_ratio  # noqa: E402
from moir.report import study  # noqa: E402
from moir.storage import write_text_atomic  # noqa: E402

log = logging.getLogger("moir.report")

CLEAN = "clean"
NOISE = "noise"
PLACEMENT_LABELS = {"attn": "Attn", "mlp": "MLP", "proj": "Proj."}
METHOD_LABELS = {"ft": "FT", "moir": "FT w/ MoIR"}
# (key, Markdown header, LaTeX header): the paper's columns of Tables 1 and 3.
MAIN_COLUMNS = (
    ("acc", "Acc. ↑", r"Acc. $\uparrow$"),
    ("rank_delta_image", "Rank ΔI ↑", r"Rank $\Delta$I $\uparrow$"),
    ("rank_delta_text", "Rank ΔT ↑", r"Rank $\Delta$T $\uparrow$"),
    ("mdi", "MDI ↓", r"MDI $\downarrow$"),
    ("aei", "AEI ↓", r"AEI $\downarrow$"),
)
# Reported in the CSV beside the main columns (not in the paper's tables).
EXTRA_COLUMNS = (
    "acc_img", "judge_score", "mdi_early", "mdi_middle", "mdi_late", "aei_early", "aei_middle", "aei_late",
    "rank_image", "rank_text",
    "acc_hint_right", "acc_hint_wrong", "hint_follow", "router_tv", "router_changed",  # moir.report.study
)
ROBUSTNESS_COLUMNS = (
    ("unchanged_all", "All", "All"),
    ("unchanged_vision_dependent", "Vision-dependent", "Vision-dependent"),
    ("unchanged_vision_irrelevant", "Vision-irrelevant", "Vision-irrelevant"),
)


class ReportError(ValueError):
    """An input of the report is missing or malformed; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------- reading


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ReportError(f"{path}: not found (has this evaluation run?)")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def field(metrics: Mapping, dotted: str, source: Path, *, required: bool = True) -> float | None:
    """The number at `dotted` ("a.b.c") of a metrics object, or None where the evaluation recorded none (null).

    A missing field is an error naming the file and the field when `required`, else None."""
    value: object = metrics
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            if required:
                raise ReportError(f"{source}: missing field {dotted!r}")
            return None
        value = value[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"{source}: field {dotted!r} is {value!r}, expected a number")
    return float(value)


def clean_metrics(metrics: Mapping, source: Path) -> dict[str, float | None]:
    """The Table 1/3 numbers of one clean evaluation: `moir.evaluate`'s `summary`, and the breakdowns the CSV adds
    (ScienceQA's image subset, MMBench-Video's 0-3 judge score, MDI/AEI per third of the layers)."""
    row = {key: field(metrics, f"summary.{key}", source) for key, _, _ in MAIN_COLUMNS}
    row["rank_image"] = field(metrics, "summary.rank_image", source)
    row["rank_text"] = field(metrics, "summary.rank_text", source)
    row["acc_img"] = field(metrics, "accuracy.by_protocol.multiple_choice.image_subset.accuracy", source,
                           required=False)
    row["judge_score"] = field(metrics, "accuracy.by_protocol.open_ended.mean_score", source, required=False)
    for name in ("mdi", "aei"):
        for third in ("early", "middle", "late"):
            row[f"{name}_{third}"] = field(metrics, f"dominance.{name}.{third}.mean", source, required=False)
    for key in ("acc_hint_right", "acc_hint_wrong", "hint_follow", "router_tv", "router_changed"):
        row[key] = field(metrics, f"summary.{key}", source, required=False)  # hint datasets; MoIR runs
    return row


def noise_metrics(metrics: Mapping, source: Path) -> dict[str, float | None]:
    """The Table 2 numbers of one noise evaluation (`summary`)."""
    return {key: field(metrics, f"summary.{key}", source) for key, _, _ in ROBUSTNESS_COLUMNS}


def read_gates(path: Path) -> list[dict[str, float]]:
    """Per optimizer step: step, alpha_a_mean, alpha_b_mean from a MoIR run's train_metrics.jsonl."""
    if not path.is_file():
        raise ReportError(f"{path}: not found")
    points = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ReportError(f"{path}: line {number} is not valid JSON ({error})") from error
        if record.get("kind") != "step":
            continue
        missing = [key for key in ("step", "alpha_a_mean", "alpha_b_mean") if key not in record]
        if missing:
            raise ReportError(f"{path}: line {number} (a step record) has no field {missing[0]!r}")
        points.append({key: float(record[key]) for key in ("step", "alpha_a_mean", "alpha_b_mean")})
    if not points:
        raise ReportError(f"{path}: no step records with gate values")
    return points


# ---------------------------------------------------------------------------------------------- reference


def read_reference(path: Path, keys: Sequence[str]) -> dict[tuple, dict[str, float]]:
    """The paper's numbers: (table, dataset, model, placement, method, k') -> {metric: value}."""
    if not path.is_file():
        raise ReportError(f"{path}: not found")
    try:
        frame = pl.read_csv(path, infer_schema=False)  # every cell a string (or null when empty), checked below
    except pl.exceptions.PolarsError as error:
        raise ReportError(f"{path}: not a readable CSV table ({error})") from error
    reference = {}
    for number, row in enumerate(frame.iter_rows(named=True), start=2):
        try:
            ratio = float(row["k_ratio"]) if row.get("k_ratio") else None  # FT rows, and Table 2
            key = (int(row["table"]), row["dataset"], row["model"], row["placement"], row["method"], ratio)
            reference[key] = {name: float(row[name]) for name in keys}
        except (KeyError, TypeError, ValueError) as error:
            raise ReportError(f"{path}: line {number}: bad or missing field ({error!r})") from error
    return reference


def paper_value(reference: Mapping, table: int, arm: Arm, metric: str) -> float | None:
    """The paper's number for this arm, or None. A reference row without k' (Table 2) matches any k'."""
    for (t, dataset, model, placement, method, k), values in reference.items():
        if (t, dataset, model, placement, method) == (table, arm.dataset, arm.model, arm.placement, arm.method):
            if k is None or (arm.ratio is not None and math.isclose(k, arm.ratio)):
                return values.get(metric)
    return None


# ---------------------------------------------------------------------------------------------- tables


def aggregate(per_seed: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Per arm (column "arm", in table order): the mean over seeds, the sample standard deviation (`_std`) and the
    half-width of the 95% t-interval of the mean (`_ci95`). A value missing in any seed makes the cell missing; an
    infinite one makes the mean infinite and the spread missing. Fewer than two seeds: no spread."""
    expressions = []
    for key in keys:
        column = pl.col(key)
        missing = column.null_count() > 0
        infinite = column.is_infinite().any()
        several = pl.len() > 1
        std = pl.when(missing | infinite | ~several).then(None).otherwise(column.std(ddof=1))
        expressions += [
            pl.when(missing).then(None).when(infinite).then(float("inf")).otherwise(column.mean()).alias(key),
            std.alias(f"{key}_std"),
            (std * pl.col("t95").first() / pl.len().cast(pl.Float64).sqrt()).alias(f"{key}_ci95"),
        ]
    return per_seed.group_by("arm", maintain_order=True).agg(expressions).sort("arm")


# Two-sided 95% quantiles of Student's t by degrees of freedom (seeds - 1); beyond 30 the normal's 1.96.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


def t95(seeds: int) -> float | None:
    if seeds < 2:
        return None
    dof = seeds - 1
    return T95.get(dof) or next((T95[d] for d in sorted(T95) if d >= dof), 1.96)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of one cell's values over seeds (see `aggregate`)."""
    frame = pl.DataFrame({"arm": [0] * len(values), "v": [None if v is None else float(v) for v in values],
                          "t95": [t95(len(values))] * len(values)}, schema_overrides={"t95": pl.Float64})
    row = aggregate(frame, ["v"]).row(0, named=True)
    return row["v"], row["v_std"]


def build_rows(
    table: int,
    arms: Sequence[Arm],
    settings: ReportSettings,
    *,
    evaluation: str,
    reference: Mapping | None,
) -> pl.DataFrame:
    """One row per arm: identity columns, the metrics (mean, std and 95% interval over seeds), the paper's."""
    read, keys = (
        (clean_metrics, [key for key, _, _ in MAIN_COLUMNS] + list(EXTRA_COLUMNS))
        if evaluation == CLEAN
        else (noise_metrics, [key for key, _, _ in ROBUSTNESS_COLUMNS])
    )
    paper_keys = [key for key, _, _ in (MAIN_COLUMNS if evaluation == CLEAN else ROBUSTNESS_COLUMNS)]
    records = []
    for index, arm in enumerate(arms):
        for seed in settings.seeds:
            path = metrics_path(settings, f"{arm.run(seed).name}/{evaluation}")
            records.append({"arm": index, "t95": t95(len(settings.seeds)), **read(read_json(path), path)})
    schema = {"arm": pl.Int64, "t95": pl.Float64, **{key: pl.Float64 for key in keys}}
    values = aggregate(pl.DataFrame(records, schema=schema), keys)
    identity = pl.DataFrame(
        [{"arm": index, "table": table, "dataset": arm.dataset, "modality": settings.modality.get(arm.dataset, ""),
          "model": arm.model, "placement": arm.placement, "method": arm.method, "k_ratio": arm.ratio,
          "n_seeds": len(settings.seeds)} for index, arm in enumerate(arms)],
        schema={"arm": pl.Int64, "table": pl.Int64, "dataset": pl.String, "modality": pl.String, "model": pl.String,
                "placement": pl.String, "method": pl.String, "k_ratio": pl.Float64, "n_seeds": pl.Int64},
    )
    rows = identity.join(values, on="arm", how="left", maintain_order="left")
    if reference is not None:
        rows = rows.with_columns(
            pl.Series(f"{key}_paper", [paper_value(reference, table, arm, key) for arm in arms], dtype=pl.Float64)
            for key in paper_keys
        )
    return rows.drop("arm")


def metrics_path(settings: ReportSettings, key: str) -> Path:
    """The metrics.json of evaluation `key` ("<run>/<mode>"), as the workflow passed it."""
    if key not in settings.evaluations:
        raise ReportError(f"no metrics file was passed for the evaluation {key} (settings: evaluations)")
    return Path(settings.evaluations[key])


def format_number(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}"


def cell(row: Mapping, key: str) -> str:
    text = format_number(row.get(key))
    if row.get(f"{key}_std") is not None:
        text += f" ± {format_number(row[f'{key}_std'])}"
    if f"{key}_paper" in row:
        text += f" ({format_number(row[f'{key}_paper'])})"
    return text


def csv_text(rows: pl.DataFrame) -> str:
    return rows.write_csv(null_value="", line_terminator="\n")


def markdown_text(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text.replace("±", r"$\pm$").replace("–", "--")


def latex_text(headers: Sequence[str], body: Sequence[Sequence[str]], caption: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * len(headers) + "}"]
    lines += [r"\toprule", " & ".join(headers) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(text) for text in cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + latex_escape(caption) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


IDENTITY_HEADERS = {1: ["Dataset", "Modality", "Model", "Place.", "Training"], 2: ["Training"], 3: ["k'"]}


def identity_cells(row: Mapping, table: int) -> list[str]:
    """The cells that say which arm a row is, as the paper's tables write them."""
    if table == 1:
        training = METHOD_LABELS[row["method"]]
        if row["method"] == "moir":
            training += f" (k'={format_ratio(row['k_ratio'])})"
        if row.get("survives"):  # moir.report.study: the MoIR - FT difference survives Holm
            training += " *"
        return [row["dataset"], row["modality"], row["model"], PLACEMENT_LABELS[row["placement"]], training]
    if table == 2:
        return [METHOD_LABELS[row["method"]]]
    return [format_ratio(row["k_ratio"])]


def table_layout(rows: Sequence[Mapping], table: int) -> tuple[list[str], list[str], list[list[str]]]:
    """Markdown headers, LaTeX headers and cell texts of one table."""
    columns = ROBUSTNESS_COLUMNS if table == 2 else MAIN_COLUMNS
    md_headers = IDENTITY_HEADERS[table] + [header for _, header, _ in columns]
    tex_headers = [latex_escape(text) for text in IDENTITY_HEADERS[table]] + [header for _, _, header in columns]
    body = [identity_cells(row, table) + [cell(row, key) for key, _, _ in columns] for row in rows]
    return md_headers, tex_headers, body


CAPTIONS = {
    1: "Table 1: accuracy, effective-rank deltas against the base model, MDI and AEI (lower is more balanced).",
    2: "Table 2: robustness, the percentage of predictions unchanged when every image is replaced by noise.",
    3: "Table 3: the ablation of the exchange ratio k'.",
}


def render_table(frame: pl.DataFrame, table: int, *, with_reference: bool) -> dict[str, str]:
    """The table as {"md": ..., "csv": ..., "tex": ...}."""
    rows = frame.to_dicts()
    md_headers, tex_headers, body = table_layout(rows, table)
    caption = CAPTIONS[table]
    if with_reference:
        caption += " The paper's number in parentheses."
    if any(row["n_seeds"] > 1 for row in rows):
        caption += " Mean ± standard deviation over seeds."
    if "survives" in frame.columns:
        caption += " *: the MoIR − FT accuracy difference survives Holm's correction at 0.05 (comparisons.csv)."
    return {
        "md": f"**{caption}**\n\n" + markdown_text(md_headers, body),
        "csv": csv_text(frame),
        "tex": latex_text(tex_headers, body, caption),
    }


# ---------------------------------------------------------------------------------------------- figures


def grouped_bars(ax, rows: Sequence[Mapping], key: str, title: str, *, with_reference: bool) -> None:
    """Bars of `key` per setting, FT beside MoIR (the paper's value as a black tick when given)."""
    settings = list(dict.fromkeys((r["dataset"], r["model"], r["placement"]) for r in rows))  # table order
    width = 0.38
    for offset, method, colour in ((-width / 2, "ft", "#9e9e9e"), (width / 2, "moir", "#1f77b4")):
        xs, heights, papers = [], [], []
        for index, setting in enumerate(settings):
            row = next(r for r in rows if (r["dataset"], r["model"], r["placement"]) == setting and r["method"] == method)
            value = row.get(key)
            xs.append(index + offset)
            heights.append(0.0 if value is None or math.isinf(value) else value)
            papers.append(row.get(f"{key}_paper"))
        ax.bar(xs, heights, width, label=METHOD_LABELS[method], color=colour)
        if with_reference:
            ax.scatter(xs, [math.nan if p is None else p for p in papers], marker="_", s=200, color="black",
                       label="paper" if method == "ft" else None, zorder=3)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([f"{d}\n{m}\n{PLACEMENT_LABELS[p]}" for d, m, p in settings], fontsize=7)
    ax.set_title(title)
    ax.axhline(0.0, color="black", linewidth=0.5)


def save_figure(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def figure_bars(rows: Sequence[Mapping], keys: Sequence[tuple[str, str]], path: Path, *, with_reference: bool) -> None:
    n_settings = len({(r["dataset"], r["model"], r["placement"]) for r in rows})
    fig, axes = plt.subplots(len(keys), 1, figsize=(max(5.0, 0.9 * n_settings + 1.5), 3.4 * len(keys)),
                             squeeze=False, layout="constrained")
    for ax, (key, title) in zip(axes[:, 0], keys):
        grouped_bars(ax, rows, key, title, with_reference=with_reference)
    axes[0, 0].legend(fontsize=7)
    save_figure(fig, path)


def figure_ablation(rows: Sequence[Mapping], path: Path, *, with_reference: bool) -> None:
    ratios = [row["k_ratio"] for row in rows]
    fig, axes = plt.subplots(1, len(MAIN_COLUMNS), figsize=(3.2 * len(MAIN_COLUMNS), 3.2), layout="constrained")
    for ax, (key, header, _) in zip(axes, MAIN_COLUMNS):
        values = [math.nan if row.get(key) is None else row[key] for row in rows]
        errors = [0.0 if row.get(f"{key}_std") is None else row[f"{key}_std"] for row in rows]
        ax.errorbar(ratios, values, yerr=errors, marker="o", label="reproduced")
        if with_reference:
            papers = [math.nan if row.get(f"{key}_paper") is None else row[f"{key}_paper"] for row in rows]
            ax.plot(ratios, papers, marker="s", linestyle="--", color="black", label="paper")
        ax.set_xlabel("k'")
        ax.set_title(header)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def figure_gates(gates: Mapping[str, list[dict[str, float]]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True, layout="constrained")
    for name, points in gates.items():
        steps = [p["step"] for p in points]
        axes[0].plot(steps, [p["alpha_a_mean"] for p in points], label=name)
        axes[1].plot(steps, [p["alpha_b_mean"] for p in points], label=name)
    axes[0].set_title("gate into the visual tokens: mean alpha_A")
    axes[1].set_title("gate into the text tokens: mean alpha_B")
    for ax in axes:
        ax.set_xlabel("optimizer step")
    axes[0].set_ylabel("alpha = sigmoid(logit)")
    axes[1].legend(fontsize=6, loc="best")
    save_figure(fig, path)


def figure_robustness(rows: Sequence[Mapping], path: Path, *, with_reference: bool) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    width = 0.38
    for offset, row, colour in zip((-width / 2, width / 2), rows, ("#9e9e9e", "#1f77b4")):
        xs = [index + offset for index in range(len(ROBUSTNESS_COLUMNS))]
        values = [0.0 if row.get(key) is None else row[key] for key, _, _ in ROBUSTNESS_COLUMNS]
        ax.bar(xs, values, width, label=METHOD_LABELS[row["method"]], color=colour)
        if with_reference:
            papers = [row.get(f"{key}_paper") for key, _, _ in ROBUSTNESS_COLUMNS]
            ax.scatter(xs, [math.nan if p is None else p for p in papers], marker="_", s=300, color="black",
                       label="paper" if row["method"] == "ft" else None, zorder=3)
    ax.set_xticks(range(len(ROBUSTNESS_COLUMNS)))
    ax.set_xticklabels([header for _, header, _ in ROBUSTNESS_COLUMNS])
    ax.set_ylabel("unchanged predictions (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- the report


FIGURES = {
    "mdi_aei.png": "MDI and AEI per arm (lower: more balanced attention between text and visual tokens).",
    "accuracy_rank.png": "Accuracy and effective-rank deltas per arm.",
    "ablation.png": "The k' ablation (Table 3).",
    "gates.png": "Router gates (mean alpha per direction) over training, MoIR runs of Table 1.",
    "robustness.png": "Unchanged predictions under image noise (Table 2).",
}


@dataclass
class Collected:
    """Everything the report shows, read and checked before anything is written."""

    frames: dict[int, pl.DataFrame]  # table number -> its rows

    @property
    def rows(self) -> dict[int, list[dict]]:
        return {table: frame.to_dicts() for table, frame in self.frames.items()}
    gates: dict[str, list[dict[str, float]]]  # MoIR setting of Table 1 -> gate values per step
    with_reference: dict[int, bool]  # table number -> the paper's numbers are in its rows
    # moir.report.study: "comparisons" (None without predictions), "table4" (None without Table 4),
    # "router_effect" and "router_channels" frames, "validity"
    study: dict = dataclasses.field(default_factory=dict)


def collect(settings: ReportSettings) -> Collected:
    """Read every input of the report (the files the workflow passed); a missing or malformed one raises
    ReportError naming it."""
    tables = Tables.from_dict(settings.tables)
    tables_ref = (read_reference(Path(settings.reference_tables), [k for k, _, _ in MAIN_COLUMNS])
                  if settings.reference_tables else None)
    robust_ref = (read_reference(Path(settings.reference_robustness), [k for k, _, _ in ROBUSTNESS_COLUMNS])
                  if settings.reference_robustness else None)
    arms1 = tables.table1()
    frames = {
        1: build_rows(1, arms1, settings, evaluation=CLEAN, reference=tables_ref),
        2: build_rows(2, tables.table2_arms(), settings, evaluation=NOISE, reference=robust_ref),
        3: build_rows(3, tables.table3_arms(), settings, evaluation=CLEAN, reference=tables_ref),
    }
    gates = {}
    for arm in arms1:
        if arm.method == "moir":
            name = arm.run(settings.seeds[0]).name
            if name not in settings.gates:
                raise ReportError(f"no train_metrics.jsonl was passed for the run {name} (settings: gates)")
            gates[f"{arm.dataset} {arm.model} {arm.placement}"] = read_gates(Path(settings.gates[name]))
    with_reference = {1: tables_ref is not None, 2: robust_ref is not None, 3: tables_ref is not None}
    found = collect_study(settings, tables)
    if found["comparisons"] is not None:
        frames[1] = study.mark_table1(frames[1], found["comparisons"])
        arms4 = tables.table4_arms()
        if arms4:
            found["table4"] = study.table4_frame(build_rows(4, arms4, settings, evaluation=CLEAN, reference=None),
                                                 arms4, found["comparisons"])
    return Collected(frames, gates, with_reference, found)


def collect_study(settings: ReportSettings, tables: Tables) -> dict:
    """The inputs of moir.report.study's sections, read and checked (StudyError becomes ReportError)."""
    clean = {}
    for key in settings.evaluations:
        run, _, mode = key.rpartition("/")
        if mode == CLEAN:
            path = metrics_path(settings, key)
            clean[run] = (read_json(path), path)
    runs = study.moir_runs(tables, settings.seeds)
    missing = [name for name in runs if name not in clean]
    if missing:
        raise ReportError(f"no metrics file was passed for the evaluation {missing[0]}/clean (settings: evaluations)")
    try:
        effect, channels = study.router_effect_rows(runs, clean)
        return {"comparisons": study.comparisons(settings, tables) if settings.predictions else None,
                "table4": None, "router_effect": effect, "router_channels": channels,
                "validity": study.validity(clean)}
    except study.StudyError as error:
        raise ReportError(str(error)) from error


def write_tables(collected: Collected, out: Path) -> dict[int, dict[str, str]]:
    """table<N>.md/.csv/.tex for each table; returns the rendered texts."""
    out.mkdir(parents=True, exist_ok=True)
    rendered = {}
    for table, frame in collected.frames.items():
        rendered[table] = render_table(frame, table, with_reference=collected.with_reference[table])
        for suffix, text in rendered[table].items():
            write_text_atomic(out / f"table{table}.{suffix}", text)
    return rendered


def write_figures(collected: Collected, out: Path) -> None:
    """The FIGURES, as PNG files."""
    out.mkdir(parents=True, exist_ok=True)
    rows, reference = collected.rows, collected.with_reference
    figure_bars(rows[1], [("mdi", "MDI ↓"), ("aei", "AEI ↓")], out / "mdi_aei.png", with_reference=reference[1])
    figure_bars(rows[1], [("acc", "Acc. ↑"), ("rank_delta_image", "Rank ΔI ↑"), ("rank_delta_text", "Rank ΔT ↑")],
                out / "accuracy_rank.png", with_reference=reference[1])
    figure_ablation(rows[3], out / "ablation.png", with_reference=reference[3])
    figure_gates(collected.gates, out / "gates.png")
    figure_robustness(rows[2], out / "robustness.png", with_reference=reference[2])


VALIDITY_CAPTION = "MDI and AEI against the hint-follow rate, one point per evaluated run (the validity check)."


def write_study(found: dict, out: Path) -> list[str]:
    """comparisons.csv/.md, table4.csv/.md, router_effect.csv, router_channels.csv and validity.png; returns the
    sections of report.md."""
    sections = []
    if found["table4"] is not None:
        markdown = study.table4_markdown(found["table4"])
        write_text_atomic(out / "table4.csv", csv_text(found["table4"]))
        write_text_atomic(out / "table4.md", markdown)
        sections.append(markdown)
    if found["comparisons"] is not None:
        markdown = study.comparisons_markdown(found["comparisons"])
        write_text_atomic(out / "comparisons.csv", csv_text(found["comparisons"]))
        write_text_atomic(out / "comparisons.md", markdown)
        sections.append(markdown)
    write_text_atomic(out / "router_effect.csv", csv_text(found["router_effect"]))
    write_text_atomic(out / "router_channels.csv", csv_text(found["router_channels"]))
    sections.append(study.router_effect_markdown(found["router_effect"]))
    sections.append(study.validity_line(found["validity"]))
    study.figure_validity(found["validity"], out / "validity.png", save_figure)
    study.figure_selected_gates(found["router_channels"], found["router_effect"], out / "gates_selected.png",
                                save_figure)
    sections.append("![Gates of the chosen channels](gates_selected.png)\n\nEach MoIR run's gates (first seed) "
                    "against how often Eq. 2 chose their channel at evaluation: only chosen channels can learn.\n")
    return sections


def build_report(settings: ReportSettings, out: Path) -> Collected:
    """Read every input, then write the tables, the figures and report.md (all of them on one page) into `out`."""
    collected = collect(settings)
    rendered = write_tables(collected, out)
    write_figures(collected, out)
    seeds = ", ".join(str(seed) for seed in settings.seeds)
    page = [f"# MoIR: reproduced results ({out.parent})\n", f"Seeds: {seeds}.\n"]
    page += [rendered[table]["md"] for table in (1, 2, 3)]
    page += write_study(collected.study, out)
    page += [f"![{caption}]({name})\n\n{caption}\n" for name, caption in FIGURES.items()]
    page.append(f"![{VALIDITY_CAPTION}](validity.png)\n\n{VALIDITY_CAPTION}\n")
    write_text_atomic(out / "report.md", "\n".join(page))
    log.info("report written to %s", out)
    return collected


# ---------------------------------------------------------------------------------------------- CLI


def read_settings(value: Mapping) -> ReportSettings:
    """--settings as ReportSettings; a missing or unknown key is an error naming it."""
    names = [item.name for item in dataclasses.fields(ReportSettings)]
    missing, unknown = sorted(set(names) - set(value)), sorted(set(value) - set(names))
    if missing or unknown:
        raise ReportError(f"--settings: missing keys {missing}, unknown keys {unknown} (expected: {', '.join(names)})")
    return ReportSettings(**value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moir.report",
        description="Tables 1-3 (Markdown, CSV, LaTeX) and figures from the pipeline's metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--settings", type=json_object, required=True, metavar="JSON",
                        help="moir.plan.ReportSettings as JSON: the table layout, seeds, modalities and the metrics "
                             "files to read (the report rule passes it; moir.plan.Plan.report_settings builds it)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the tables, figures and report.md")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        build_report(read_settings(args.settings), args.out)
    except ReportError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
