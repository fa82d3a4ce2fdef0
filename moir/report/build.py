"""The report: the paper's Tables 1-3 as Markdown, CSV and LaTeX, and its figures, from the pipeline's metrics.

The last stage of the DAG. It reads what the evaluation and training stages wrote and lays it out as the paper
does, so a reader compares the two side by side:

- Table 1: accuracy, effective-rank deltas (image/video, text), MDI and AEI for every (dataset, model) pair,
  LoRA placement and arm (FT, FT w/ MoIR at k'), from each run's clean evaluation.
- Table 2: robustness, the rate of unchanged predictions when the images become noise (all questions,
  vision-dependent, vision-irrelevant), FT against MoIR, from the noise evaluation.
- Table 3: the k' ablation, Table 1's columns for MoIR at each k'.

Table 1 also has each (dataset, model) pair's base model row (no fine-tuning). MDI and AEI are read as the distance
from 1 (balanced), |log MDI| in the CSV, never "lower is better". Every caption names its setting and what one test
question is worth in points (100 / the number of questions the evaluation scored). With several seeds a cell is the
mean ± the half-width of its 95% t-interval, and the CSV also holds the sample standard deviation (`<metric>_std`) and
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
import matplotlib.ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from moir.settings import json_object  # noqa: E402
from moir.plan import Arm, Plan, ReportSettings, Tables, format_ratio  # noqa: E402
from moir.report import study  # noqa: E402
from moir.report import table5  # noqa: E402
from moir.storage import write_text_atomic  # noqa: E402
from moir.report.breakdowns import breakdown_sections  # noqa: E402
from moir.metrics.reading import HINT_OUTCOMES, split_category  # noqa: E402

log = logging.getLogger("moir.report")

CLEAN = "clean"
NOISE = "noise"
PLACEMENT_LABELS = {"attn": "Attn", "mlp": "MLP", "proj": "Proj."}
METHOD_LABELS = {"ft": "FT", "moir": "FT w/ MoIR"}
# (key, Markdown header, LaTeX header): the paper's columns of Tables 1 and 3.
# MDI and AEI carry no arrow: 1 is balanced and the distance from 1 (|log MDI|, in the CSV) is the imbalance.
MAIN_COLUMNS = (
    ("acc", "Acc. (%) ↑", r"Acc. (\%) $\uparrow$"),
    ("rank_delta_image", "Rank ΔI ↑", r"Rank $\Delta$I $\uparrow$"),
    ("rank_delta_text", "Rank ΔT ↑", r"Rank $\Delta$T $\uparrow$"),
    ("mdi", "MDI (1 = bal.)", r"MDI (1 = bal.)"),
    ("aei", "AEI (1 = bal.)", r"AEI (1 = bal.)"),
)
# Reported in the CSV beside the main columns (not in the paper's tables).
EXTRA_COLUMNS = (
    "acc_img", "judge_score", "mdi_early", "mdi_middle", "mdi_late", "aei_early", "aei_middle", "aei_late",
    "rank_image", "rank_text", "mdi_abs_log", "aei_abs_log", "n_questions",
    "acc_hint_right", "acc_hint_wrong", "hint_follow", "router_tv", "router_changed",  # moir.report.study
)
ROBUSTNESS_COLUMNS = (
    ("unchanged_all", "All (%)", r"All (\%)"),
    ("unchanged_vision_dependent", "Vision-dependent (%)", r"Vision-dependent (\%)"),
    ("unchanged_vision_irrelevant", "Vision-irrelevant (%)", r"Vision-irrelevant (\%)"),
)
# Reported in Table 2's CSV: the number of questions behind each rate (its resolution).
ROBUSTNESS_COUNTS = ("n_all", "n_vision_dependent", "n_vision_irrelevant")
BASE = "base"  # the method of the base model's row (no fine-tuning) in Table 1


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
        row[f"{name}_abs_log"] = distance_from_balance(row[name])
    row["n_questions"] = field(metrics, "accuracy.n", source, required=False)
    for key in ("acc_hint_right", "acc_hint_wrong", "hint_follow", "router_tv", "router_changed"):
        row[key] = field(metrics, f"summary.{key}", source, required=False)  # hint datasets; MoIR runs
    return row


def distance_from_balance(value: float | None) -> float | None:
    """|log x| of an MDI or AEI: 0 when balanced (x = 1); an x and its inverse (0.8 and 1.25) are equally far."""
    if value is None or math.isnan(value):
        return None
    if value <= 0 or math.isinf(value):
        return math.inf
    return abs(math.log(value))


def noise_metrics(metrics: Mapping, source: Path) -> dict[str, float | None]:
    """The Table 2 numbers of one noise evaluation (`summary`), and the number of questions behind each rate."""
    row = {key: field(metrics, f"summary.{key}", source) for key, _, _ in ROBUSTNESS_COLUMNS}
    for count, group in zip(ROBUSTNESS_COUNTS, ("all", "vision_dependent", "vision_irrelevant")):
        row[count] = field(metrics, f"robustness.{group}.n", source, required=False)
    return row


GATE_EXTRAS = tuple(f"alpha_{side}_{stat}" for side in "ab" for stat in ("min", "max", "selected", "selected_mean"))


def read_gates(path: Path) -> list[dict[str, float]]:
    """Per optimizer step: step, alpha_a_mean, alpha_b_mean (and those of GATE_EXTRAS the run recorded) from a
    MoIR run's train_metrics.jsonl."""
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
        point = {key: float(record[key]) for key in ("step", "alpha_a_mean", "alpha_b_mean")}
        for key in GATE_EXTRAS:  # recorded by newer runs: the range of the gates, those of the selected channels
            if isinstance(record.get(key), (int, float)):
                point[key] = float(record[key])
        points.append(point)
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
        else (noise_metrics, [key for key, _, _ in ROBUSTNESS_COLUMNS] + list(ROBUSTNESS_COUNTS))
    )
    paper_keys = [key for key, _, _ in (MAIN_COLUMNS if evaluation == CLEAN else ROBUSTNESS_COLUMNS)]
    records = []
    n_seeds = [len(evaluation_keys(arm, settings, evaluation)) for arm in arms]
    for index, arm in enumerate(arms):
        for key in evaluation_keys(arm, settings, evaluation):
            path = metrics_path(settings, key)
            records.append({"arm": index, "t95": t95(n_seeds[index]), **read(read_json(path), path)})
    schema = {"arm": pl.Int64, "t95": pl.Float64, **{key: pl.Float64 for key in keys}}
    values = aggregate(pl.DataFrame(records, schema=schema), keys)
    identity = pl.DataFrame(
        [{"arm": index, "table": table, "dataset": arm.dataset, "modality": settings.modality.get(arm.dataset, ""),
          "model": arm.model, "placement": arm.placement, "method": arm.method, "k_ratio": arm.ratio,
          "n_seeds": n_seeds[index]} for index, arm in enumerate(arms)],
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


def evaluation_keys(arm: Arm, settings: ReportSettings, evaluation: str) -> list[str]:
    """The evaluations ("<run>/<mode>") averaged into an arm's row: one per seed; the base model's one (it is
    not trained, so it has no seeds)."""
    if arm.method == BASE:
        return [f"{Plan.base_name(Arm(arm.dataset, arm.model, '', 'ft', None).run(0))}/{evaluation}"]
    return [f"{arm.run(seed).name}/{evaluation}" for seed in settings.seeds]


def base_arms(tables: Tables) -> list[Arm]:
    """The base model's row of each (dataset, model) pair of Table 1."""
    return [Arm(dataset, model, "", BASE, None) for dataset, model in tables.pairs]


def with_base_rows(rows: pl.DataFrame, base: pl.DataFrame) -> pl.DataFrame:
    """Table 1 with each pair's base row before the pair's arms."""
    parts = []
    for dataset, model in base.select("dataset", "model").iter_rows():
        pair = (pl.col("dataset") == dataset) & (pl.col("model") == model)
        parts += [base.filter(pair), rows.filter(pair)]
    return pl.concat(parts, how="diagonal_relaxed")


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
    """A table cell: the mean, ± the half-width of its 95% interval over seeds, (the paper's number)."""
    text = format_number(row.get(key))
    if row.get(f"{key}_ci95") is not None:
        text += f" ± {format_number(row[f'{key}_ci95'])}"
    if f"{key}_paper" in row:
        text += f" ({format_number(row[f'{key}_paper'])})"
    return text


def csv_text(rows: pl.DataFrame) -> str:
    return rows.write_csv(null_value="", line_terminator="\n")


def is_numeric_column(body: Sequence[Sequence[str]], index: int) -> bool:
    """A column whose every cell starts with a number (or is "–"/"inf"): right-aligned in Markdown and LaTeX."""
    cells = [cells[index] for cells in body]
    return bool(cells) and all(text[:1].isdigit() or text[:1] in "-–" or text.startswith("inf") for text in cells)


def markdown_text(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    rules = ["---:" if is_numeric_column(body, index) else "---" for index in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                          ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(char, escaped)
    return text.replace("±", r"$\pm$").replace("–", "--").replace("Δ", r"$\Delta$")


def latex_text(headers: Sequence[str], body: Sequence[Sequence[str]], caption: str, label: str | None = None, *,
               wide: bool = False) -> str:
    """A paste-ready booktabs table (needs \\usepackage{booktabs}): caption and label on top, text columns
    left-aligned, numeric columns right-aligned. `headers` are LaTeX already; `body` and `caption` are escaped.
    Scaled to the column width (`wide`: a `table*` spanning both columns of a two-column paper, scaled to the
    text width); needs graphicx."""
    spec = "".join("r" if is_numeric_column(body, index) else "l" for index in range(len(headers)))
    environment = "table*" if wide else "table"
    lines = [r"% Needs \usepackage{booktabs} and \usepackage{graphicx} in the preamble.", r"\begin{" + environment + "}[t]", r"\centering", r"\small",
             r"\caption{" + latex_escape(caption) + "}"]
    if label:
        lines.append(r"\label{" + label + "}")
    lines.append(r"\resizebox{" + (r"\textwidth" if wide else r"\columnwidth") + "}{!}{%")
    lines += [r"\begin{tabular}{@{}" + spec + "@{}}", r"\toprule", " & ".join(headers) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(text) for text in cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{" + environment + "}"]
    return "\n".join(lines) + "\n"


IDENTITY_HEADERS = {1: ["Dataset", "Modality", "Model", "Place.", "Training"], 2: ["Training"], 3: ["k'"]}
PLACEMENT_NAMES = {"attn": "LoRA on the attention layers (Attn)", "mlp": "LoRA on the feed-forward layers (MLP)",
                   "proj": "LoRA on the projection layers (Proj.)"}


def identity_cells(row: Mapping, table: int) -> list[str]:
    """The cells that say which arm a row is, as the paper's tables write them."""
    if table == 1:
        if row["method"] == BASE:
            return [row["dataset"], row["modality"], row["model"], "–", "Base (no fine-tuning)"]
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
    1: "Accuracy, effective-rank deltas against the base model, MDI and AEI for every (dataset, model) pair, LoRA "
       "placement and training.",
    2: "Robustness: the percentage of predictions unchanged when every image (or video frame) is replaced by "
       "noise.",
    3: "The ablation of the exchange ratio k' of FT w/ MoIR.",
}
MDI_READING = ("MDI and AEI: 1 is balanced attention between text and visual tokens, above 1 the text dominates, "
               "below 1 the visual tokens do; the distance from 1 is the imbalance.")


def setting_text(row: Mapping) -> str:
    """"<dataset> (<modality>), <model>, LoRA on ..." for the one setting of Table 2 or 3."""
    modality = f" ({row['modality']})" if row.get("modality") else ""
    return f"{row['dataset']}{modality}, {row['model']}, {PLACEMENT_NAMES.get(row['placement'], row['placement'])}"


def resolution_text(rows: Sequence[Mapping], table: int) -> str:
    """What one test question is worth in points, from the number of questions each evaluation scored."""
    if table == 2:
        counts = {(row.get("n_all"), row.get("n_vision_dependent"), row.get("n_vision_irrelevant")) for row in rows}
        parts = [f"{int(a)} questions with an image (one question = {100 / a:.2f} points), {int(d)} "
                 f"vision-dependent ({100 / d if d else math.nan:.2f} points), {int(i)} vision-irrelevant "
                 f"({100 / i if i else math.nan:.2f} points)" for a, d, i in sorted(counts, key=str) if a]
        return ("Rates over " + "; ".join(parts) + ".") if parts else ""
    by_dataset: dict[str, set[int]] = {}
    for row in rows:
        if row.get("n_questions"):
            by_dataset.setdefault(row["dataset"], set()).add(int(row["n_questions"]))
    parts = [f"{dataset}: {n} test questions, one question = {100 / n:.2f} points"
             for dataset, counts in by_dataset.items() for n in sorted(counts)]
    return ("Resolution of the accuracy: " + "; ".join(parts) + ".") if parts else ""


def table_caption(rows: Sequence[Mapping], table: int, *, with_reference: bool) -> str:
    """CAPTIONS[table] with the setting, the reading of MDI/AEI, the resolution, the seeds and the reference."""
    caption = CAPTIONS[table]
    if table == 1:
        caption += (" Accuracy in % (the benchmark's protocol); rank deltas: change of the effective rank of the "
                    "visual (ΔI) and text (ΔT) hidden states against the base model (the base row is that reference). "
                    + MDI_READING)
    elif rows:
        caption += " " + setting_text(rows[0])
        caption += (f"; FT against FT w/ MoIR (k'={format_ratio(rows[-1]['k_ratio'])})." if table == 2 else
                    ". Accuracy in %. " + MDI_READING)
    resolution = resolution_text(rows, table)
    if resolution:
        caption += " " + resolution
    seeds = max((row["n_seeds"] for row in rows), default=1)
    if seeds > 1:
        caption += f" Mean ± half-width of the 95% t-interval over {seeds} seeds."
    if with_reference:
        caption += " The paper's number in parentheses."
    return caption


def render_table(frame: pl.DataFrame, table: int, *, with_reference: bool) -> dict[str, str]:
    """The table as {"md": ..., "csv": ..., "tex": ...}."""
    rows = frame.to_dicts()
    md_headers, tex_headers, body = table_layout(rows, table)
    caption = table_caption(rows, table, with_reference=with_reference)
    if "survives" in frame.columns:
        caption += " *: the MoIR - FT accuracy difference survives Holm's correction at 0.05 (comparisons.csv)."
    return {
        "md": f"**Table {table}.** {caption}\n\n" + markdown_text(md_headers, body),
        "csv": csv_text(frame),
        "tex": latex_text(tex_headers, body, caption, label=f"tab:moir-table{table}", wide=table == 1),
    }


# ---------------------------------------------------------------------------------------------- figures


# Paper print sizes: one column of a two-column paper is about 3.3 in wide, the full page about 7 in; every font
# is at least 8 pt at that size, and the PNGs are drawn at 200 dpi.
ONE_COLUMN, TWO_COLUMNS = 3.3, 7.0
FIGURE_STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 8,
                "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 9, "savefig.dpi": 200}
COLOURS = {"ft": "#7f7f7f", "moir": "#1f77b4", BASE: "#000000"}
MARKERS = {"ft": "o", "moir": "s", BASE: "x"}


def finite(value: float | None) -> float:
    return math.nan if value is None or math.isinf(value) else value


def interval(rows: Sequence[Mapping], key: str) -> list[float] | None:
    """The half-widths of the 95% intervals of `key` (None when no row has one: a single seed)."""
    values = [row.get(f"{key}_ci95") for row in rows]
    return None if all(v is None for v in values) else [0.0 if v is None else v for v in values]


def seeds_text(rows: Sequence[Mapping]) -> str:
    seeds = max((row["n_seeds"] for row in rows if row["method"] != BASE), default=1)
    return "1 seed" if seeds == 1 else f"mean and 95% interval over {seeds} seeds"


def balance_axis(ax, values: Sequence[float]) -> None:
    """A log-scale y axis that always shows 1 (balanced, drawn in green) and at least 1/2..2, so that 0.8 and 1.25
    sit equally far from 1, with ticks at reciprocal pairs (decades when the values span more than 10x)."""
    finite_values = [v for v in values if v > 0 and math.isfinite(v)]
    low = min([0.5] + [v / 1.15 for v in finite_values])
    high = max([2.0] + [v * 1.15 for v in finite_values])
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    span = max(1 / low, high)
    if span <= 3:
        candidates = (0.5, 0.67, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0)
    elif span <= 12:
        candidates = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    else:
        candidates = tuple(10.0 ** k for k in range(-6, 7))
    ticks = [t for t in candidates if low <= t <= high]
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{t:g}" for t in ticks]))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.axhline(1.0, color="#2ca02c", linewidth=1, label="balanced (1)")


def setting_axis(ax, settings: Sequence[tuple[str, str, str]], *, pair_labels: bool) -> None:
    """x ticks at each (dataset, model, placement): the placement under the tick, the pair once below its group."""
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([PLACEMENT_LABELS[placement] for _, _, placement in settings])
    ax.set_xlim(-0.6, len(settings) - 0.4)
    pairs = list(dict.fromkeys((dataset, model) for dataset, model, _ in settings))
    for number, pair in enumerate(pairs):
        indices = [i for i, setting in enumerate(settings) if setting[:2] == pair]
        if number:
            ax.axvline(indices[0] - 0.5, color="#cccccc", linewidth=0.8)
        if pair_labels:
            ax.annotate(f"{pair[0]}\n{pair[1]}", xy=((indices[0] + indices[-1]) / 2, 0), xycoords=("data", "axes fraction"),
                        xytext=(0, -22), textcoords="offset points", ha="center", va="top", fontweight="bold")


def arm_dots(ax, rows: Sequence[Mapping], key: str, *, with_reference: bool, legend: bool) -> list[float]:
    """Per (dataset, model, placement): FT and MoIR side by side with their 95% intervals, the base model's value
    (one per pair) as a cross, the paper's as a black bar. Returns the plotted values."""
    arms = [row for row in rows if row["method"] != BASE]
    settings = list(dict.fromkeys((r["dataset"], r["model"], r["placement"]) for r in arms))
    plotted = []
    for offset, method in ((-0.15, "ft"), (0.15, "moir")):
        chosen = [next(r for r in arms if (r["dataset"], r["model"], r["placement"]) == s and r["method"] == method)
                  for s in settings]
        xs = [index + offset for index in range(len(settings))]
        values = [finite(row.get(key)) for row in chosen]
        plotted += values
        label = METHOD_LABELS[method] + (f" (k'={format_ratio(chosen[0]['k_ratio'])})" if method == "moir" else "")
        ax.errorbar(xs, values, yerr=interval(chosen, key), fmt=MARKERS[method], color=COLOURS[method],
                    markersize=4, capsize=2, linewidth=1, label=label if legend else None)
        if with_reference:
            papers = [finite(row.get(f"{key}_paper")) for row in chosen]
            ax.scatter(xs, papers, marker="_", s=80, color="black", zorder=3,
                       label="paper" if legend and method == "ft" else None)
            plotted += papers
    base = [row for row in rows if row["method"] == BASE]
    for number, row in enumerate(base):
        indices = [i for i, s in enumerate(settings) if s[:2] == (row["dataset"], row["model"])]
        if indices and row.get(key) is not None:
            ax.hlines(finite(row[key]), indices[0] - 0.4, indices[-1] + 0.4, color=COLOURS[BASE], linewidth=0.8,
                      linestyle=":", label="base model" if legend and number == 0 else None)
            plotted.append(finite(row[key]))
    setting_axis(ax, settings, pair_labels=False)
    return plotted


def save_figure(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def figure_mdi_aei(rows: Sequence[Mapping], path: Path, *, with_reference: bool) -> Figure:
    """MDI and AEI of Table 1 on a log scale symmetric around 1 (balanced), y = 1 drawn."""
    with plt.rc_context(FIGURE_STYLE):
        fig, axes = plt.subplots(2, 1, figsize=(TWO_COLUMNS, 4.6), sharex=True, layout="constrained")
        for ax, key, name in zip(axes, ("mdi", "aei"), ("MDI", "AEI")):
            values = arm_dots(ax, rows, key, with_reference=with_reference, legend=key == "mdi")
            balance_axis(ax, values)
            ax.set_ylabel(f"{name} (ratio, log scale)")
        axes[0].set_title("MDI: attention per text token / per visual token. Above 1 the text dominates.", loc="left")
        axes[1].set_title("AEI: text's share of attention / its share of tokens. Distance from 1 = imbalance.",
                          loc="left")
        setting_axis(axes[1], list(dict.fromkeys((r["dataset"], r["model"], r["placement"]) for r in rows
                                                 if r["method"] != BASE)), pair_labels=True)
        axes[1].set_xlabel("LoRA placement, per (dataset, model)", labelpad=30)
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        fig.suptitle(f"Table 1: modality dominance per arm ({seeds_text(rows)})")
        save_figure(fig, path)
    return fig


def figure_accuracy_rank(rows: Sequence[Mapping], path: Path, *, with_reference: bool) -> Figure:
    """Accuracy (0-100 %) and the rank deltas (around 0) of Table 1."""
    with plt.rc_context(FIGURE_STYLE):
        fig, axes = plt.subplots(3, 1, figsize=(TWO_COLUMNS, 6.0), sharex=True, layout="constrained")
        panels = (("acc", "accuracy (%)", "Accuracy (benchmark protocol)"),
                  ("rank_delta_image", "Δ effective rank (dims)", "Rank ΔI: visual hidden states, against the base model"),
                  ("rank_delta_text", "Δ effective rank (dims)", "Rank ΔT: text hidden states, against the base model"))
        for ax, (key, label, title) in zip(axes, panels):
            values = arm_dots(ax, rows, key, with_reference=with_reference, legend=key == "acc")
            if key == "acc":
                ax.set_ylim(0, 100)
            else:
                ax.axhline(0.0, color="black", linewidth=0.6)
                reach = max([1.0] + [1.15 * abs(v) for v in values if math.isfinite(v)])
                ax.set_ylim(-reach, reach)
            ax.set_ylabel(label)
            ax.set_title(title, loc="left")
        setting_axis(axes[-1], list(dict.fromkeys((r["dataset"], r["model"], r["placement"]) for r in rows
                                                  if r["method"] != BASE)), pair_labels=True)
        axes[-1].set_xlabel("LoRA placement, per (dataset, model)", labelpad=30)
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        fig.suptitle(f"Table 1: accuracy and effective-rank deltas per arm ({seeds_text(rows)})")
        save_figure(fig, path)
    return fig


def figure_ablation(rows: Sequence[Mapping], path: Path, *, with_reference: bool, ft: Mapping | None = None) -> Figure:
    """Table 3 against k' (ticks at the k' that ran), with 95% intervals; FT of the same setting as a dotted line."""
    ratios = [row["k_ratio"] for row in rows]
    panels = (
        ("accuracy (%)", (("acc", "Acc."),), "linear"),
        ("Δ effective rank (dims)", (("rank_delta_image", "Rank ΔI"), ("rank_delta_text", "Rank ΔT")), "linear"),
        ("MDI, AEI (log scale; 1 = balanced)", (("mdi", "MDI"), ("aei", "AEI")), "log"),
    )
    with plt.rc_context(FIGURE_STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(TWO_COLUMNS, 2.9), layout="constrained")
        for ax, (ylabel, keys, scale) in zip(axes, panels):
            values, handles = [], []
            for (key, name), colour in zip(keys, ("#1f77b4", "#d62728")):
                ys = [finite(row.get(key)) for row in rows]
                values += ys
                handles.append(ax.errorbar(ratios, ys, yerr=interval(rows, key), marker="o", markersize=4, capsize=2, color=colour,
                            linewidth=1, label=name))
                if ft is not None and ft.get(key) is not None:
                    ax.axhline(finite(ft[key]), color=colour, linestyle=":", linewidth=1)
                    values.append(finite(ft[key]))
                if with_reference:
                    papers = [finite(row.get(f"{key}_paper")) for row in rows]
                    ax.plot(ratios, papers, marker="_", linestyle="--", color=colour, linewidth=0.8)
                    values += papers
            if scale == "log":
                balance_axis(ax, values)
            elif keys[0][0] == "acc":
                ax.set_ylim(0, 100)
            else:
                ax.axhline(0.0, color="black", linewidth=0.6)
                reach = max([1.0] + [1.15 * abs(v) for v in values if math.isfinite(v)])
                ax.set_ylim(-reach, reach)
            ax.set_xticks(ratios)
            ax.set_xticklabels([format_ratio(ratio) for ratio in ratios])
            ax.set_xlabel("exchange ratio k'")
            ax.set_ylabel(ylabel)
            if len(keys) > 1:
                ax.legend(handles=handles, loc="lower center", ncol=2, frameon=False,
                          bbox_to_anchor=(0.5, 1.0), handlelength=1.2, columnspacing=1.0)
        styles = [Line2D([], [], color="black", marker="o", markersize=4, linewidth=1, label="FT w/ MoIR at k'")]
        if ft is not None:
            styles.append(Line2D([], [], color="black", linestyle=":", linewidth=1, label="FT (no router)"))
        if with_reference:
            styles.append(Line2D([], [], color="black", linestyle="--", marker="_", linewidth=0.8, label="paper"))
        styles.append(Line2D([], [], color="#2ca02c", linewidth=1, label="balanced (MDI, AEI = 1)"))
        fig.legend(handles=styles, loc="outside lower center", ncol=len(styles), frameon=False)
        setting = setting_text(rows[0]) if rows else ""
        fig.suptitle(f"Table 3: k' ablation ({seeds_text(rows)})\n{setting}")
        save_figure(fig, path)
    return fig


def gate_moves(gates: Mapping[str, list[dict[str, float]]], init: float = 0.5) -> float:
    """max |alpha - init| over every run, step and channel (the min/max records; the means without them)."""
    keys = ("alpha_a_min", "alpha_a_max", "alpha_b_min", "alpha_b_max", "alpha_a_mean", "alpha_b_mean")
    return max((abs(point[key] - init) for points in gates.values() for point in points for key in keys
                if key in point), default=0.0)


def figure_gates(gates: Mapping[str, list[dict[str, float]]], path: Path) -> Figure:
    """Per direction, per MoIR run of Table 1: the mean gate of the selected channels (all channels for runs
    that did not record them) with the range over channels shaded, on one step axis; the title says how far the
    gates moved (max |alpha - 0.5|, `gate_moves`)."""
    moved = gate_moves(gates)
    with plt.rc_context(FIGURE_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(TWO_COLUMNS, 3.2), sharex=True, sharey=True, layout="constrained")
        colours = plt.get_cmap("tab10").colors
        selected_everywhere = all("alpha_a_selected_mean" in p and "alpha_b_selected_mean" in p
                                  for points in gates.values() for p in points)
        banded = all("alpha_a_min" in p and "alpha_a_max" in p for points in gates.values() for p in points)
        for (name, points), colour in zip(gates.items(), colours):
            steps = [p["step"] for p in points]
            for ax, side in zip(axes, "ab"):
                selected = all(f"alpha_{side}_selected_mean" in p for p in points)
                mean = [p[f"alpha_{side}_selected_mean" if selected else f"alpha_{side}_mean"] for p in points]
                ax.plot(steps, mean, color=colour, linewidth=1, label=name if side == "a" else None)
                if all(f"alpha_{side}_min" in p and f"alpha_{side}_max" in p for p in points):
                    ax.fill_between(steps, [p[f"alpha_{side}_min"] for p in points],
                                    [p[f"alpha_{side}_max"] for p in points], color=colour, alpha=0.15, linewidth=0)
        for ax, title in zip(axes, ("into the visual tokens (alpha_A)", "into the text tokens (alpha_B)")):
            ax.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
            ax.set_title(f"gates {title}", loc="left")
            ax.set_xlabel("optimizer step")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylim(0, 1)
        axes[0].set_ylabel("alpha (0: keep own channel, 1: take other's)")
        title = "MoIR run (line: mean gate of " + ("the selected channels" if selected_everywhere else "all channels")
        title += ("; band: min to max over channels)" if banded else ")")
        fig.legend(loc="outside lower center", ncol=3, frameon=False, title=title)
        fig.suptitle(f"Router gates over training, first seed: the gates moved at most {moved:.3g} from 0.5")
        save_figure(fig, path)
    return fig


def figure_robustness(rows: Sequence[Mapping], path: Path, *, with_reference: bool) -> Figure:
    """Table 2's unchanged rates (0-100 %), FT beside MoIR, with 95% intervals."""
    with plt.rc_context(FIGURE_STYLE):
        fig, ax = plt.subplots(figsize=(ONE_COLUMN, 2.8), layout="constrained")
        width = 0.38
        for offset, row in zip((-width / 2, width / 2), rows):
            xs = [index + offset for index in range(len(ROBUSTNESS_COLUMNS))]
            values = [finite(row.get(key)) for key, _, _ in ROBUSTNESS_COLUMNS]
            errors = [row.get(f"{key}_ci95") for key, _, _ in ROBUSTNESS_COLUMNS]
            label = METHOD_LABELS[row["method"]] + (f" (k'={format_ratio(row['k_ratio'])})"
                                                    if row["method"] == "moir" else "")
            ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width, color=COLOURS[row["method"]],
                   label=label, yerr=None if all(e is None for e in errors) else [e or 0.0 for e in errors],
                   capsize=2)
            if with_reference:
                papers = [finite(row.get(f"{key}_paper")) for key, _, _ in ROBUSTNESS_COLUMNS]
                ax.scatter(xs, papers, marker="_", s=150, color="black", zorder=3,
                           label="paper" if row["method"] == "ft" else None)
        counts = [rows[0].get(count) if rows else None for count in ROBUSTNESS_COUNTS]
        ax.set_xticks(range(len(ROBUSTNESS_COLUMNS)))
        ax.set_xticklabels([header.replace(" (%)", "").replace("Vision-", "Vision-\n")
                            + ("" if n is None else f"\n(n={int(n)})") for (_, header, _), n in
                            zip(ROBUSTNESS_COLUMNS, counts)])
        ax.set_xlabel("questions with an image")
        ax.set_ylabel("unchanged predictions (%)")
        ax.set_ylim(0, 100)
        fig.legend(loc="outside lower center", ncol=3, frameon=False)
        setting = setting_text(rows[0]).replace(", LoRA", ",\nLoRA") if rows else ""
        ax.set_title(f"Table 2: images replaced by noise ({seeds_text(rows)})\n{setting}")
        save_figure(fig, path)
    return fig


# ---------------------------------------------------------------------------------------------- the report


FIGURES = {
    "mdi_aei.png": "MDI and AEI of every arm of Table 1 (log scale, green line: 1 = balanced; dotted: the base "
                   "model).",
    "accuracy_rank.png": "Accuracy (%) and effective-rank deltas against the base model, every arm of Table 1.",
    "ablation.png": "The k' ablation (Table 3) against k', with FT of the same setting dotted.",
    "gates.png": "Router gates over training, the MoIR runs of Table 1 (first seed).",
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
    tables: Tables | None = None  # the layout (the settings of Tables 2 and 3)
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
        1: with_base_rows(build_rows(1, arms1, settings, evaluation=CLEAN, reference=tables_ref),
                          build_rows(1, base_arms(tables), settings, evaluation=CLEAN, reference=tables_ref)),
        2: build_rows(2, tables.table2_arms(), settings, evaluation=NOISE, reference=robust_ref),
        3: build_rows(3, tables.table3_arms(), settings, evaluation=CLEAN, reference=tables_ref),
    }
    gates = {}
    for arm in arms1:
        if arm.method == "moir":
            name = arm.run(settings.seeds[0]).name
            if name not in settings.gates:
                raise ReportError(f"no train_metrics.jsonl was passed for the run {name} (settings: gates)")
            gates[f"{arm.dataset} / {arm.model} / {PLACEMENT_LABELS[arm.placement]}"] = read_gates(
                Path(settings.gates[name]))
    with_reference = {1: tables_ref is not None, 2: robust_ref is not None, 3: tables_ref is not None}
    found = collect_study(settings, tables)
    found["base_reading"] = base_reading_frame(settings, tables)
    if found["comparisons"] is not None:
        frames[1] = study.mark_table1(frames[1], found["comparisons"])
        arms4 = tables.table4_arms()
        if arms4:
            found["table4"] = study.table4_frame(build_rows(4, arms4, settings, evaluation=CLEAN, reference=None),
                                                 arms4, found["comparisons"])
    found["table5"] = None
    if tables.table5 is not None:
        try:
            found["table5"] = table5.table5_frame(settings, tables)
        except (table5.Table5Error, study.StudyError) as error:
            raise ReportError(str(error)) from error
    return Collected(frames, gates, with_reference, tables, found)


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


def base_reading_frame(settings: ReportSettings, tables: Tables) -> pl.DataFrame | None:
    """Do the base models read the media? Per (dataset, model) pair, question type and protocol (and "all"
    protocols), the base's accuracy when the text hint is right and when it is wrong, from its clean evaluation
    (`accuracy.by_protocol.<protocol>.by_category`, the categories "<type>:hint-right|wrong" of
    moir.data.synthetic; moir.metrics.reading). None when no evaluated dataset labels its hints."""
    counts: dict[tuple, dict[str, list[float]]] = {}  # (pair, type, protocol) -> outcome -> [n, correct]
    for arm in base_arms(tables):
        path = metrics_path(settings, evaluation_keys(arm, settings, CLEAN)[0])
        metrics = read_json(path)
        accuracy = metrics.get("accuracy")
        protocols = accuracy.get("by_protocol") if isinstance(accuracy, Mapping) else None
        if not isinstance(protocols, Mapping):
            raise ReportError(f"{path}: missing field 'accuracy.by_protocol'")
        for protocol, entry in sorted(protocols.items()):
            for category in sorted((entry or {}).get("by_category") or {}):
                try:
                    question_type, outcome = split_category(category)
                except ValueError:
                    continue  # a benchmark's own category, not a labelled hint
                where = f"accuracy.by_protocol.{protocol}.by_category.{category}"
                n = field(metrics, f"{where}.n", path)
                correct = n * (field(metrics, f"{where}.accuracy", path, required=False) or 0.0) / 100.0
                for key in (protocol, "all"):
                    group = counts.setdefault((arm.dataset, arm.model, question_type, key),
                                              {o: [0.0, 0.0] for o in HINT_OUTCOMES})
                    group[outcome][0] += n
                    group[outcome][1] += correct
    if not counts:
        return None

    def percent(n: float, correct: float) -> float | None:
        return 100.0 * correct / n if n else None

    rows = []
    for (dataset, model, question_type, protocol), outcomes in counts.items():
        (n_right, right), (n_wrong, wrong) = outcomes["hint-right"], outcomes["hint-wrong"]
        rows.append({"dataset": dataset, "model": model, "question_type": question_type, "protocol": protocol,
                     "n": round(n_right + n_wrong), "n_hint_right": round(n_right),
                     "acc_hint_right": percent(n_right, right), "n_hint_wrong": round(n_wrong),
                     "acc_hint_wrong": percent(n_wrong, wrong)})
    pairs = {pair: index for index, pair in enumerate(tables.pairs)}
    rows.sort(key=lambda r: (pairs[(r["dataset"], r["model"])], r["question_type"], r["protocol"] != "all",
                             r["protocol"]))
    return pl.DataFrame(rows, schema={"dataset": pl.String, "model": pl.String, "question_type": pl.String,
                                      "protocol": pl.String, "n": pl.Int64, "n_hint_right": pl.Int64,
                                      "acc_hint_right": pl.Float64, "n_hint_wrong": pl.Int64,
                                      "acc_hint_wrong": pl.Float64})


def write_tables(collected: Collected, out: Path) -> dict[int, dict[str, str]]:
    """table<N>.md/.csv/.tex for each table; returns the rendered texts."""
    out.mkdir(parents=True, exist_ok=True)
    rendered = {}
    for table, frame in collected.frames.items():
        rendered[table] = render_table(frame, table, with_reference=collected.with_reference[table])
        for suffix, text in rendered[table].items():
            write_text_atomic(out / f"table{table}.{suffix}", text)
    return rendered


def write_figures(collected: Collected, out: Path) -> dict[str, str]:
    """The FIGURES, as PNG files; returns each figure's caption for report.md (FIGURES' text and the numbers the
    figure shows: its setting, how far the gates moved)."""
    out.mkdir(parents=True, exist_ok=True)
    rows, reference = collected.rows, collected.with_reference
    figure_mdi_aei(rows[1], out / "mdi_aei.png", with_reference=reference[1])
    figure_accuracy_rank(rows[1], out / "accuracy_rank.png", with_reference=reference[1])
    table3 = rows[3][0] if rows[3] else None
    ft = next((row for row in rows[1] if table3 is not None and row["method"] == "ft" and
               (row["dataset"], row["model"], row["placement"]) ==
               (table3["dataset"], table3["model"], table3["placement"])), None)
    figure_ablation(rows[3], out / "ablation.png", with_reference=reference[3], ft=ft)
    figure_gates(collected.gates, out / "gates.png")
    moved = gate_moves(collected.gates)
    figure_robustness(rows[2], out / "robustness.png", with_reference=reference[2])
    captions = dict(FIGURES)
    if table3 is not None:
        captions["ablation.png"] += f" Setting: {setting_text(table3)}."
    if rows[2]:
        captions["robustness.png"] += f" Setting: {setting_text(rows[2][0])}."
    captions["gates.png"] += (f" The gates start at 0.5 and moved at most {moved:.3g} from it (max |alpha - 0.5| over "
                              "runs, steps and channels).")
    return captions


DEFINITIONS = """\
## Definitions

- **FT**: LoRA fine-tuning of the model on the dataset's training split; **FT w/ MoIR**: the same with the
  Multi-modal Information Router, which exchanges the k' share of each modality's least informative channels
  with the other modality through learned gates. **Base**: the model before fine-tuning.
- **Place.**: where LoRA is applied: Attn (attention layers), MLP (feed-forward layers), Proj. (the projection
  layers).
- **Acc. (%)**: the benchmark's official accuracy on its test questions, in percent (option letter for multiple
  choice, VQA accuracy for VizWiz, the judge's 0-3 score / 3 for open-ended video questions). One question's
  weight in points is given under each table (100 / number of questions).
- **Rank ΔI, Rank ΔT**: the change of the effective rank (exp of the entropy of the normalised singular values)
  of the visual (I: image or video) and of the text tokens' hidden states, run minus base model on the same
  questions, in dimensions. Higher: the tokens carry more information. The base row has none (it is the
  reference).
- **MDI** (Modality Dominance Index): attention per text token / attention per visual token. **AEI** (Attention
  Efficiency Index): the text's share of the attention / its share of the tokens. Both are 1 when attention is
  spread evenly over text and visual tokens; above 1 the text dominates, below 1 the visual tokens do. The
  imbalance is the distance from 1, |log MDI| (the CSV's `mdi_abs_log`, `aei_abs_log`): an MDI of 0.8 and one of
  1.25 are equally unbalanced. (The paper marks them "lower is better", which agrees while they stay above 1.)
- **Unchanged (%)** (Table 2): the share of questions with an image whose normalised prediction stays the same
  when every image (or video frame) is replaced by Gaussian noise; vision-irrelevant questions are those the base
  model answers correctly without the image, vision-dependent the others. Lower: the model uses its visual input.
- With several seeds a cell is the mean ± the half-width of its 95% t-interval (the CSV also holds `_std`).
"""


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
    if found.get("table5") is not None:
        sections.append(write_table5(found["table5"], out))
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


def write_table5(frame: pl.DataFrame, out: Path) -> str:
    """table5.csv/.md/.tex (moir.report.table5); returns the Markdown."""
    headers, body, caption = table5.layout(frame)
    markdown = f"**{caption}**\n\n" + markdown_text(headers, body)
    latex_headers, latex_body, _ = table5.layout(frame, latex=True)
    write_text_atomic(out / "table5.csv", csv_text(frame))
    write_text_atomic(out / "table5.md", markdown)
    write_text_atomic(out / "table5.tex", latex_text(latex_headers, latex_body, caption, "tab:table5"))
    return markdown


def build_report(settings: ReportSettings, out: Path) -> Collected:
    """Read every input, then write the tables, the figures and report.md (all of them on one page) into `out`."""
    collected = collect(settings)
    rendered = write_tables(collected, out)
    captions = write_figures(collected, out)
    seeds = ", ".join(str(seed) for seed in settings.seeds)
    page = [f"# MoIR: reproduced results ({out.parent.name})\n",
            f"The paper's Tables 1-3 and five figures, from this pipeline's evaluations in `{out.parent}`. "
            f"Seeds: {seeds}. Each table's caption names its dataset, model and LoRA placement and what one test "
            "question is worth; the definitions follow the tables.\n"]
    page += [rendered[table]["md"] for table in (1, 2, 3)]
    page.append(DEFINITIONS)
    page.append("## Figures\n")
    page += [f"![{FIGURES[name]}]({name})\n\n{caption}\n" for name, caption in captions.items()]
    page += breakdown_sections(settings, out)  # moir/report/breakdowns.py: VizWiz, MMBench-Video, paper intervals
    page += write_study(collected.study, out)
    if collected.study.get("base_reading") is not None:
        write_text_atomic(out / "base_reading.csv", csv_text(collected.study["base_reading"]))
    page.append(f"![{VALIDITY_CAPTION}](validity.png)\n\n{VALIDITY_CAPTION}\n")
    write_text_atomic(out / "report.md", "\n".join(page))
    log.info("report written to %s", out)
    return collected


# ---------------------------------------------------------------------------------------------- CLI


def read_settings(value: Mapping) -> ReportSettings:
    """--settings as ReportSettings; a missing or unknown key is an error naming it."""
    names = [item.name for item in dataclasses.fields(ReportSettings)]
    optional = {item.name for item in dataclasses.fields(ReportSettings) if item.metadata.get("omit_if_none")}
    missing, unknown = sorted(set(names) - set(value) - optional), sorted(set(value) - set(names))
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
