"""The report: the paper's Tables 1-3 as Markdown, CSV and LaTeX, and its figures, from the pipeline's metrics.

The last stage of the DAG. It reads what the evaluation and training stages wrote and lays it out as the paper
does, so a reader compares the two side by side:

- Table 1: accuracy, effective-rank deltas (image/video, text), MDI and AEI for every (dataset, model) pair,
  LoRA placement and arm (FT, FT w/ MoIR at k'), from each run's clean evaluation.
- Table 2: robustness, the rate of unchanged predictions when the images become noise (all questions,
  vision-dependent, vision-irrelevant), FT against MoIR, from the noise evaluation.
- Table 3: the k' ablation, Table 1's columns for MoIR at each k'.

With several seeds a cell is the mean and the CSV also holds the sample standard deviation. When reference
tables are given (the `paper` suite), every cell also shows the paper's number: in the CSV as `<metric>_paper`,
in Markdown and LaTeX in parentheses after ours. Figures (PNG, matplotlib Agg): MDI/AEI per arm, accuracy and
rank deltas per arm, the k' ablation curves, the router gates over training, and the robustness bars.

Where the numbers come from (the workflow's layout, see workflow/rules/):
    <results>/eval/<run>/clean/metrics.json   Tables 1 and 3
    <results>/eval/<run>/noise/metrics.json   Table 2
    <results>/runs/<run>/train_metrics.jsonl  the gates figure
with <run> = `<dataset>__<model>__<placement>__<arm>__seed<seed>` and <arm> = `ft` or `moir-k<k'>` (k' as `%g`).

Usage (the `report` rule):

    python -m moir.report --results results/demo --out results/demo/report \
        --table1 synth-image:tiny-llava synth-video:tiny-qwen2.5-vl --placements attn mlp proj --ratio 0.1 \
        --table2 synth-image:tiny-llava:attn --table3 synth-image:tiny-llava:attn --ratios 0.05 0.1 0.15 \
        --seeds 0 --modality synth-image=I+T synth-video=V+T \
        [--reference-tables moir/reference/paper_tables.csv --reference-robustness moir/reference/paper_robustness.csv]

Writes into --out: table1/2/3.{md,csv,tex}, mdi_aei.png, accuracy_rank.png, ablation.png, gates.png,
robustness.png and report.md (the tables and figures on one page). A missing or malformed input stops the report
with an error naming the file (and the field); nothing is left half-written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

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
)
ROBUSTNESS_COLUMNS = (
    ("unchanged_all", "All", "All"),
    ("unchanged_vision_dependent", "Vision-dependent", "Vision-dependent"),
    ("unchanged_vision_irrelevant", "Vision-irrelevant", "Vision-irrelevant"),
)


class ReportError(ValueError):
    """An input of the report is missing or malformed; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------------- runs


def format_ratio(ratio: float) -> str:
    """k' as it appears in run names: `%g` (0.1, 0.05, 0.15)."""
    return f"{ratio:g}"


@dataclass(frozen=True)
class Arm:
    """One row of a table: a (dataset, model, placement) setting trained by one method at one k'."""

    dataset: str
    model: str
    placement: str
    method: str  # "ft" or "moir"
    ratio: float | None = None  # k' of a MoIR arm; None for FT

    def run_name(self, seed: int) -> str:
        arm = "ft" if self.method == "ft" else f"moir-k{format_ratio(self.ratio)}"
        return f"{self.dataset}__{self.model}__{self.placement}__{arm}__seed{seed}"


def table1_arms(pairs: Sequence[tuple[str, str]], placements: Sequence[str], ratio: float) -> list[Arm]:
    return [
        arm
        for dataset, model in pairs
        for placement in placements
        for arm in (Arm(dataset, model, placement, "ft"), Arm(dataset, model, placement, "moir", ratio))
    ]


def table2_arms(setting: tuple[str, str, str], ratio: float) -> list[Arm]:
    dataset, model, placement = setting
    return [Arm(dataset, model, placement, "ft"), Arm(dataset, model, placement, "moir", ratio)]


def table3_arms(setting: tuple[str, str, str], ratios: Sequence[float]) -> list[Arm]:
    dataset, model, placement = setting
    return [Arm(dataset, model, placement, "moir", ratio) for ratio in ratios]


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
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    reference = {}
    for number, row in enumerate(rows, start=2):
        try:
            ratio = float(row["k_ratio"]) if row.get("k_ratio") else None  # FT rows, and Table 2
            key = (int(row["table"]), row["dataset"], row["model"], row["placement"], row["method"], ratio)
            reference[key] = {name: float(row[name]) for name in keys}
        except (KeyError, ValueError) as error:
            raise ReportError(f"{path}: line {number}: bad or missing field ({error})") from error
    return reference


def paper_value(reference: Mapping, table: int, arm: Arm, metric: str) -> float | None:
    """The paper's number for this arm, or None. A reference row without k' (Table 2) matches any k'."""
    for (t, dataset, model, placement, method, k), values in reference.items():
        if (t, dataset, model, placement, method) == (table, arm.dataset, arm.model, arm.placement, arm.method):
            if k is None or (arm.ratio is not None and math.isclose(k, arm.ratio)):
                return values.get(metric)
    return None


# ---------------------------------------------------------------------------------------------- tables


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over seeds; None where a value is missing or there is one seed."""
    if any(value is None for value in values) or not values:
        return None, None
    if any(math.isinf(value) for value in values):
        return math.inf, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(per_seed: Sequence[Mapping[str, float | None]], keys: Iterable[str]) -> dict[str, float | None]:
    row = {}
    for key in keys:
        row[key], row[f"{key}_std"] = mean_std([values[key] for values in per_seed])
    return row


def build_rows(
    table: int,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    results: Path,
    *,
    evaluation: str,
    modality: Mapping[str, str],
    reference: Mapping | None,
) -> list[dict]:
    """One row per arm: identity columns, the metrics (mean, std over seeds) and the paper's numbers."""
    read, keys = (
        (clean_metrics, [key for key, _, _ in MAIN_COLUMNS] + list(EXTRA_COLUMNS))
        if evaluation == CLEAN
        else (noise_metrics, [key for key, _, _ in ROBUSTNESS_COLUMNS])
    )
    paper_keys = [key for key, _, _ in (MAIN_COLUMNS if evaluation == CLEAN else ROBUSTNESS_COLUMNS)]
    rows = []
    for arm in arms:
        per_seed = []
        for seed in seeds:
            path = results / "eval" / arm.run_name(seed) / evaluation / "metrics.json"
            per_seed.append(read(read_json(path), path))
        row = {
            "table": table,
            "dataset": arm.dataset,
            "modality": modality.get(arm.dataset, ""),
            "model": arm.model,
            "placement": arm.placement,
            "method": arm.method,
            "k_ratio": arm.ratio,
            "n_seeds": len(seeds),
        }
        row.update(aggregate(per_seed, keys))
        if reference is not None:
            for key in paper_keys:
                row[f"{key}_paper"] = paper_value(reference, table, arm, key)
        rows.append(row)
    return rows


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


def csv_text(rows: Sequence[Mapping]) -> str:
    columns = list(rows[0]) if rows else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
    return buffer.getvalue()


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


def render_table(rows: Sequence[Mapping], table: int, *, with_reference: bool) -> dict[str, str]:
    """The table as {"md": ..., "csv": ..., "tex": ...}."""
    md_headers, tex_headers, body = table_layout(rows, table)
    caption = CAPTIONS[table]
    if with_reference:
        caption += " The paper's number in parentheses."
    if any(row["n_seeds"] > 1 for row in rows):
        caption += " Mean ± standard deviation over seeds."
    return {
        "md": f"**{caption}**\n\n" + markdown_text(md_headers, body),
        "csv": csv_text(rows),
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
class ReportSpec:
    """What the report lays out; mirrors the experiment grid of config.yaml."""

    pairs: list[tuple[str, str]]
    placements: list[str]
    ratio: float
    robustness: tuple[str, str, str]
    ablation: tuple[str, str, str]
    ratios: list[float]
    seeds: list[int]
    modality: dict[str, str]


@dataclass
class Collected:
    """Everything the report shows, read and checked before anything is written."""

    rows: dict[int, list[dict]]  # table number -> rows
    gates: dict[str, list[dict[str, float]]]  # MoIR setting of Table 1 -> gate values per step
    with_reference: dict[int, bool]  # table number -> the paper's numbers are in its rows


def collect(
    spec: ReportSpec,
    results: Path,
    *,
    reference_tables: Path | None = None,
    reference_robustness: Path | None = None,
) -> Collected:
    """Read every input of the report; a missing or malformed one raises ReportError naming it."""
    tables_ref = read_reference(reference_tables, [k for k, _, _ in MAIN_COLUMNS]) if reference_tables else None
    robust_ref = (
        read_reference(reference_robustness, [k for k, _, _ in ROBUSTNESS_COLUMNS]) if reference_robustness else None
    )
    arms1 = table1_arms(spec.pairs, spec.placements, spec.ratio)
    rows = {
        1: build_rows(1, arms1, spec.seeds, results, evaluation=CLEAN, modality=spec.modality, reference=tables_ref),
        2: build_rows(2, table2_arms(spec.robustness, spec.ratio), spec.seeds, results, evaluation=NOISE,
                      modality=spec.modality, reference=robust_ref),
        3: build_rows(3, table3_arms(spec.ablation, spec.ratios), spec.seeds, results, evaluation=CLEAN,
                      modality=spec.modality, reference=tables_ref),
    }
    gates = {
        f"{arm.dataset} {arm.model} {arm.placement}": read_gates(
            results / "runs" / arm.run_name(spec.seeds[0]) / "train_metrics.jsonl"
        )
        for arm in arms1
        if arm.method == "moir"
    }
    with_reference = {1: tables_ref is not None, 2: robust_ref is not None, 3: tables_ref is not None}
    return Collected(rows, gates, with_reference)


def write_tables(collected: Collected, out: Path) -> dict[int, dict[str, str]]:
    """table<N>.md/.csv/.tex for each table; returns the rendered texts."""
    out.mkdir(parents=True, exist_ok=True)
    rendered = {}
    for table, rows in collected.rows.items():
        rendered[table] = render_table(rows, table, with_reference=collected.with_reference[table])
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


def build_report(
    spec: ReportSpec,
    results: Path,
    out: Path,
    *,
    reference_tables: Path | None = None,
    reference_robustness: Path | None = None,
) -> Collected:
    """Read every input, then write the tables, the figures and report.md (all of them on one page) into `out`."""
    collected = collect(spec, results, reference_tables=reference_tables, reference_robustness=reference_robustness)
    rendered = write_tables(collected, out)
    write_figures(collected, out)
    seeds = ", ".join(str(seed) for seed in spec.seeds)
    page = [f"# MoIR: reproduced results ({results})\n", f"Seeds: {seeds}.\n"]
    page += [rendered[table]["md"] for table in (1, 2, 3)]
    page += [f"![{caption}]({name})\n\n{caption}\n" for name, caption in FIGURES.items()]
    write_text_atomic(out / "report.md", "\n".join(page))
    log.info("report written to %s", out)
    return collected


# ---------------------------------------------------------------------------------------------- CLI


def _pair(text: str) -> tuple[str, str]:
    parts = text.split(":")
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected DATASET:MODEL, got {text!r}")
    return parts[0], parts[1]


def _setting(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected DATASET:MODEL:PLACEMENT, got {text!r}")
    if parts[2] not in PLACEMENT_LABELS:
        raise argparse.ArgumentTypeError(f"placement must be one of {sorted(PLACEMENT_LABELS)}, got {parts[2]!r}")
    return parts[0], parts[1], parts[2]


def _modality(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected DATASET=MODALITY, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moir.report",
        description="Tables 1-3 (Markdown, CSV, LaTeX) and figures from the pipeline's metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--results", type=Path, required=True, help="results/<suite>: holds eval/ and runs/")
    parser.add_argument("--out", type=Path, required=True, help="directory for the tables, figures and report.md")
    parser.add_argument("--table1", type=_pair, nargs="+", required=True, metavar="DATASET:MODEL")
    parser.add_argument("--placements", nargs="+", choices=sorted(PLACEMENT_LABELS), required=True)
    parser.add_argument("--ratio", type=float, required=True, help="k' of the MoIR arm of Tables 1 and 2")
    parser.add_argument("--table2", type=_setting, required=True, metavar="DATASET:MODEL:PLACEMENT")
    parser.add_argument("--table3", type=_setting, required=True, metavar="DATASET:MODEL:PLACEMENT")
    parser.add_argument("--ratios", type=float, nargs="+", required=True, help="the k' values of Table 3")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--modality", type=_modality, nargs="*", default=[], metavar="DATASET=MODALITY")
    parser.add_argument("--reference-tables", type=Path, help="the paper's Tables 1 and 3 (CSV)")
    parser.add_argument("--reference-robustness", type=Path, help="the paper's Table 2 (CSV)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = ReportSpec(
        pairs=args.table1, placements=args.placements, ratio=args.ratio, robustness=args.table2,
        ablation=args.table3, ratios=args.ratios, seeds=args.seeds, modality=dict(args.modality),
    )
    try:
        build_report(spec, args.results, args.out, reference_tables=args.reference_tables,
                     reference_robustness=args.reference_robustness)
    except ReportError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
