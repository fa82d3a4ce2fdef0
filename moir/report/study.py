"""The report's study sections: paired FT-vs-MoIR comparisons, Table 4 (the design-choice ablation), the router
diagnostics and the validity check of MDI/AEI against ground-truth text reliance.

- comparisons.csv/.md: every MoIR-vs-FT pair of Table 1 (same dataset, model, placement and seeds) and of Table 4:
  the mean accuracy difference MoIR - FT in points with a 95% paired bootstrap interval over questions and seeds
  (`moir.metrics.stats.paired_bootstrap`), the exact McNemar p (pairs of all seeds stacked), the Holm-adjusted p
  over the comparisons of the same table, and `survives` (Holm p <= 0.05). Accuracy here is the share of questions
  answered correctly (`correct` of predictions.parquet: the option, exact match, full VQA credit, judge >= 2),
  the 0/1 outcome both tests need; it equals the headline accuracy on the synthetic and multiple-choice sets.
- table4.csv/.md: each design variant against FT at one setting: Table 1's columns, the reliance and router
  columns, and the comparison columns.
- router_effect.csv: per MoIR run (and seed), the clean evaluation's `router_effect` (router on vs off): mean and
  max total variation, percent of changed predictions, and per direction (a: into the visual tokens, b: into the
  text tokens) the examples routed, the channels ever chosen, |alpha - gate_init| over them (mean, max) and over all
  channels (max), and the 5 most chosen channels; router_channels.csv: every (run, direction, channel) count and
  its gate alpha at the end of training.
- validity: across every run's clean evaluation of the suite, Spearman's rho of MDI and of AEI with the hint-follow
  rate, with a bootstrap interval (`spearman_bootstrap`); a line of report.md and validity.png.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from moir.metrics.stats import holm, mcnemar_exact, paired_bootstrap, spearman_bootstrap
from moir.plan import Arm, ReportSettings, Tables, format_ratio

ALPHA = 0.05  # the family-wise error rate of the Holm correction
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
COMPARISON_COLUMNS = ("diff", "diff_low", "diff_high", "p_mcnemar", "p_holm", "survives")


class StudyError(ValueError):
    """An input of the study sections is missing or malformed; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------- comparisons


def read_correct(path: Path) -> dict[str, bool]:
    """id -> correct of one evaluation's predictions.parquet."""
    if not path.is_file():
        raise StudyError(f"{path}: not found (has this evaluation run?)")
    try:
        table = pq.read_table(path, columns=["id", "correct"])
    except (pa.ArrowInvalid, OSError, KeyError) as error:
        raise StudyError(f"{path}: not a predictions table with columns 'id' and 'correct' ({error})") from error
    if not pa.types.is_boolean(table.schema.field("correct").type) or table.column("correct").null_count:
        raise StudyError(f"{path}: column 'correct' must be boolean without nulls")
    return dict(zip(table.column("id").to_pylist(), table.column("correct").to_pylist()))


def paired_outcomes(ft_paths: Sequence[Path], moir_paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, questions) 0/1 arrays of the two arms, one row per seed, the same question in each column. Both arms
    of a seed, and every seed, must hold the same questions (the same test split)."""
    questions = None
    ft_rows, moir_rows = [], []
    for ft_path, moir_path in zip(ft_paths, moir_paths, strict=True):
        ft, moir = read_correct(ft_path), read_correct(moir_path)
        if set(ft) != set(moir):
            raise StudyError(f"{moir_path}: its questions differ from those of {ft_path} "
                             f"({len(set(ft) ^ set(moir))} not in both); a paired comparison needs the same ones")
        if questions is None:
            questions = sorted(ft)
        elif set(questions) != set(ft):
            raise StudyError(f"{ft_path}: its questions differ from those of {ft_paths[0]} (another seed)")
        ft_rows.append([ft[q] for q in questions])
        moir_rows.append([moir[q] for q in questions])
    return np.array(ft_rows, dtype=float), np.array(moir_rows, dtype=float)


def compare(ft: np.ndarray, moir: np.ndarray) -> dict:
    """MoIR - FT: mean difference in accuracy points with its paired bootstrap interval, and the McNemar p."""
    interval = paired_bootstrap(moir, ft, n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED)
    test = mcnemar_exact(moir, ft)
    return {"diff": 100 * interval["mean_diff"], "diff_low": 100 * interval["low"],
            "diff_high": 100 * interval["high"], "p_mcnemar": test["p"], "moir_only": test["a_only"],
            "ft_only": test["b_only"], "n_questions": interval["n_questions"], "n_seeds": interval["n_seeds"]}


def predictions_path(settings: ReportSettings, run: str) -> Path:
    key = f"{run}/clean"
    if key not in settings.predictions:
        raise StudyError(f"no predictions file was passed for the evaluation {key} (settings: predictions)")
    return Path(settings.predictions[key])


def comparison_pairs(tables: Tables) -> list[tuple[int, Arm, Arm]]:
    """(table, FT arm, MoIR arm) of every comparison: Table 1's settings, then Table 4's variants."""
    pairs = []
    arms1 = tables.table1()
    for ft, moir in zip(arms1[0::2], arms1[1::2]):
        pairs.append((1, ft, moir))
    arms4 = tables.table4_arms()
    pairs += [(4, arms4[0], moir) for moir in arms4[1:]]
    return pairs


def comparisons(settings: ReportSettings, tables: Tables) -> pl.DataFrame:
    """One row per comparison (`comparison_pairs`), Holm-adjusted within each table."""
    rows = []
    for table, ft, moir in comparison_pairs(tables):
        ft_paths = [predictions_path(settings, ft.run(seed).name) for seed in settings.seeds]
        moir_paths = [predictions_path(settings, moir.run(seed).name) for seed in settings.seeds]
        rows.append({"table": table, "dataset": moir.dataset, "model": moir.model, "placement": moir.placement,
                     "arm": moir.label, "variant": moir.variant or "default", "k_ratio": moir.ratio,
                     **compare(*paired_outcomes(ft_paths, moir_paths))})
    for table in sorted({row["table"] for row in rows}):
        family = [row for row in rows if row["table"] == table]
        for row, adjusted in zip(family, holm([row["p_mcnemar"] for row in family])):
            row.update(p_holm=adjusted, survives=adjusted <= ALPHA)
    schema = {"table": pl.Int64, "dataset": pl.String, "model": pl.String, "placement": pl.String,
              "arm": pl.String, "variant": pl.String, "k_ratio": pl.Float64, "diff": pl.Float64,
              "diff_low": pl.Float64, "diff_high": pl.Float64, "p_mcnemar": pl.Float64, "moir_only": pl.Int64,
              "ft_only": pl.Int64, "n_questions": pl.Int64, "n_seeds": pl.Int64, "p_holm": pl.Float64,
              "survives": pl.Boolean}
    return pl.DataFrame(rows, schema=schema)


def mark_table1(frame: pl.DataFrame, found: pl.DataFrame) -> pl.DataFrame:
    """Table 1's rows with the comparison columns on its MoIR rows (FT rows: empty)."""
    keys = ["dataset", "model", "placement"]
    joined = found.filter(pl.col("table") == 1).select(*keys, *COMPARISON_COLUMNS).with_columns(
        pl.lit("moir").alias("method"))
    return frame.join(joined, on=[*keys, "method"], how="left", maintain_order="left")


def format_p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def interval_text(row: Mapping) -> str:
    return f"{row['diff']:+.2f} [{row['diff_low']:+.2f}, {row['diff_high']:+.2f}]"


def comparisons_markdown(found: pl.DataFrame) -> str:
    headers = ["Table", "Dataset", "Model", "Place.", "Arm", "Δ acc. MoIR − FT [95% CI]", "McNemar p", "Holm p",
               "Survives"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in found.iter_rows(named=True):
        cells = [str(row["table"]), row["dataset"], row["model"], row["placement"], row["arm"], interval_text(row),
                 format_p(row["p_mcnemar"]), format_p(row["p_holm"]), "**yes**" if row["survives"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    caption = (f"**Paired comparisons, MoIR − FT: mean accuracy difference (points) with a 95% paired bootstrap "
               f"interval over questions and seeds ({N_RESAMPLES} resamples), exact McNemar p (the pairs of all seeds "
               f"stacked), Holm-adjusted over each table's comparisons; Survives: Holm p <= {ALPHA}.**")
    return caption + "\n\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- Table 4


TABLE4_COLUMNS = (("acc", "Acc."), ("acc_hint_wrong", "Acc. hint wrong"), ("hint_follow", "Hint follow"),
                  ("mdi", "MDI"), ("aei", "AEI"), ("router_tv", "Router TV"), ("router_changed", "Changed %"))


def table4_frame(rows: pl.DataFrame, arms: Sequence[Arm], found: pl.DataFrame) -> pl.DataFrame:
    """Table 4's rows (`rows`: build_rows of its arms, in order) with the variant and the comparison columns."""
    variants = ["ft"] + [arm.variant or "default" for arm in arms[1:]]
    rows = rows.with_columns(pl.Series("variant", variants, dtype=pl.String))
    table4 = found.filter(pl.col("table") == 4).select("variant", *COMPARISON_COLUMNS)
    return rows.join(table4, on="variant", how="left", maintain_order="left")


def table4_markdown(frame: pl.DataFrame) -> str:
    headers = ["Variant"] + [header for _, header in TABLE4_COLUMNS] + ["Δ vs FT [95% CI]", "McNemar p", "Holm p"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in frame.iter_rows(named=True):
        name = row["variant"] + (" *" if row.get("survives") else "")
        values = ["–" if row.get(key) is None else f"{row[key]:.4f}" if key == "router_tv" else f"{row[key]:.2f}"
                  for key, _ in TABLE4_COLUMNS]
        comparison = ["–", "–", "–"] if row["diff"] is None else [interval_text(row), format_p(row["p_mcnemar"]),
                                                                   format_p(row["p_holm"])]
        lines.append("| " + " | ".join([name, *values, *comparison]) + " |")
    first = frame.row(0, named=True)
    caption = (f"**Table 4: design choices the paper leaves open, each against FT ({first['dataset']}, "
               f"{first['model']}, {first['placement']}, k'={format_ratio(frame['k_ratio'].drop_nulls()[0])}); "
               "means over seeds; * the difference survives Holm at 0.05.**")
    return caption + "\n\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- router effect


DIRECTION_FIELDS = ("n_routed", "n_channels_selected", "alpha_shift_selected_mean", "alpha_shift_selected_max",
                    "alpha_shift_max")
COUNT_FIELDS = ("n_routed", "n_channels_selected")


def router_effect_markdown(frame: pl.DataFrame) -> str:
    """router_effect.csv's main columns as report.md shows them."""
    headers = ["Run", "TV on/off", "Changed %", "Channels chosen a / b", "max |α−0.5| chosen a / b"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]

    def text(value, digits=4):
        return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    for row in frame.iter_rows(named=True):
        lines.append("| " + " | ".join([
            f"{row['dataset']} {row['model']} {row['placement']} {row['arm']} seed {row['seed']}",
            text(row["tv_mean"]), text(row["changed_share"], 2),
            f"{text(row['n_channels_selected_a'])} / {text(row['n_channels_selected_b'])}",
            f"{text(row['alpha_shift_selected_max_a'])} / {text(row['alpha_shift_selected_max_b'])}"]) + " |")
    caption = ("**Router diagnostics: each MoIR run's model with its router on vs off at evaluation (LoRA kept): "
               "mean total variation of the answer-position distribution, percent of changed predictions, channels "
               "ever chosen per direction (a: into the visual tokens, b: into the text), and the largest gate "
               "movement among them (router_effect.csv; every channel's count: router_channels.csv).**")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def moir_runs(tables: Tables, seeds: Sequence[int]) -> dict[str, tuple[Arm, int]]:
    """Every MoIR run of the tables (run name -> (arm, seed)), in table order."""
    runs = {}
    for arm in tables.table1() + tables.table3_arms() + tables.table4_arms():
        if arm.method == "moir":
            for seed in seeds:
                runs.setdefault(arm.run(seed).name, (arm, seed))
    return runs


def _number(value, source: Path, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudyError(f"{source}: field {name!r} is {value!r}, expected a number")
    return float(value)


def router_effect_rows(runs: Mapping[str, tuple[Arm, int]], metrics: Mapping[str, tuple[dict, Path]]
                       ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """router_effect.csv and router_channels.csv from each MoIR run's clean metrics (run -> (metrics, path)). An
    evaluation without the section (made before it existed) gives a row of empty cells."""
    rows, channels = [], []
    for name, (arm, seed) in runs.items():
        data, source = metrics[name]
        effect = data.get("router_effect") or {}
        row = {"run": name, "dataset": arm.dataset, "model": arm.model, "placement": arm.placement,
               "arm": arm.label, "seed": seed,
               **{key: _number(effect.get(key), source, f"router_effect.{key}")
                  for key in ("tv_mean", "tv_max", "changed_share")}}
        for direction in ("a", "b"):
            section = (effect.get("directions") or {}).get(direction) or {}
            for key in DIRECTION_FIELDS:
                value = _number(section.get(key), source, f"router_effect.directions.{key}")
                row[f"{key}_{direction}"] = int(value) if key in COUNT_FIELDS and value is not None else value
            counts = section.get("selection_counts") or []
            alpha = section.get("alpha") or [None] * len(counts)
            if len(alpha) != len(counts):
                raise StudyError(f"{source}: field 'router_effect.directions.{direction}.alpha' has {len(alpha)} "
                                 f"values for {len(counts)} channels")
            top = sorted(range(len(counts)), key=lambda c: (-counts[c], c))[:5]
            row[f"top_channels_{direction}"] = " ".join(f"{c}:{counts[c]}" for c in top if counts[c])
            total = sum(counts)
            channels += [{"run": name, "direction": direction, "channel": c, "count": n,
                          "share": n / total if total else None,
                          "alpha": _number(alpha[c], source, f"router_effect.directions.{direction}.alpha")}
                         for c, n in enumerate(counts)]
        rows.append(row)
    schema = {"run": pl.String, "dataset": pl.String, "model": pl.String, "placement": pl.String, "arm": pl.String,
              "seed": pl.Int64, "tv_mean": pl.Float64, "tv_max": pl.Float64, "changed_share": pl.Float64}
    for direction in ("a", "b"):
        schema.update({f"{key}_{direction}": pl.Int64 if key in COUNT_FIELDS else pl.Float64
                       for key in DIRECTION_FIELDS})
        schema[f"top_channels_{direction}"] = pl.String
    channel_schema = {"run": pl.String, "direction": pl.String, "channel": pl.Int64, "count": pl.Int64,
                      "share": pl.Float64, "alpha": pl.Float64}
    return pl.DataFrame(rows, schema=schema), pl.DataFrame(channels, schema=channel_schema)


# ---------------------------------------------------------------------------------------------- validity


def validity(metrics: Mapping[str, tuple[dict, Path]]) -> dict:
    """Spearman's rho of MDI and of AEI with the hint-follow rate over the runs whose clean evaluation has all
    three (run -> (metrics, path)); {"points": [...], "mdi": {...} | None, "aei": {...} | None}."""
    points = []
    for name, (data, source) in metrics.items():
        summary = data.get("summary") or {}
        values = {key: _number(summary.get(key), source, f"summary.{key}") for key in ("mdi", "aei", "hint_follow")}
        if all(v is not None and math.isfinite(v) for v in values.values()):
            points.append({"run": name, "dataset": name.split("__", 1)[0], **values})

    def correlations(subset: list[dict]) -> dict:
        return {key: spearman_bootstrap([p[key] for p in subset], [p["hint_follow"] for p in subset],
                                        n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED) if len(subset) >= 3 else None
                for key in ("mdi", "aei")}

    # Across datasets the correlation mixes their levels (a dataset with more text dominance and more hint-following
    # makes rho look good or bad alone): also within each dataset that has at least 3 runs.
    datasets = sorted({p["dataset"] for p in points})
    by_dataset = {name: {"n": len(subset), **correlations(subset)}
                  for name in datasets if len(subset := [p for p in points if p["dataset"] == name]) >= 3}
    return {"points": points, **correlations(points), "by_dataset": by_dataset}


def validity_line(found: dict) -> str:
    n = len(found["points"])
    if found["mdi"] is None:
        return (f"**Is MDI/AEI a valid measure?** Not computed: {n} run(s) have MDI, AEI and a hint-follow rate "
                "(at least 3 are needed; the hint-follow rate exists on datasets with labelled hints).\n")
    parts = [f"ρ({key.upper()}, hint-follow) = {found[key]['rho']:+.2f} [{found[key]['low']:+.2f}, "
             f"{found[key]['high']:+.2f}]" for key in ("mdi", "aei")]
    within = [f"{name} ({stat['n']} runs): " + "; ".join(
                  f"ρ({key.upper()}) = {stat[key]['rho']:+.2f} [{stat[key]['low']:+.2f}, {stat[key]['high']:+.2f}]"
                  for key in ("mdi", "aei") if stat[key] is not None)
              for name, stat in found.get("by_dataset", {}).items() if stat["mdi"] is not None]
    return (f"**Is MDI/AEI a valid measure?** Across the suite's {n} evaluated runs, Spearman's "
            + "; ".join(parts) + " (95% bootstrap intervals over runs)"
            + (". Within one dataset, " + "; ".join(within) if within else "")
            + ". A valid measure of text dominance rises with the rate at which the model follows a wrong hint "
            "(positive ρ).\n")


def figure_validity(found: dict, path: Path, save_figure) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415  (the report module chose the Agg backend)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), layout="constrained")
    follow = [p["hint_follow"] for p in found["points"]]
    for ax, key in zip(axes, ("mdi", "aei")):
        ax.scatter([p[key] for p in found["points"]], follow, s=14)
        stat = found[key]
        title = key.upper()
        if stat is not None:
            title += f": ρ = {stat['rho']:+.2f} [{stat['low']:+.2f}, {stat['high']:+.2f}]"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(key.upper())
    axes[0].set_ylabel("hint-follow rate (%)")
    save_figure(fig, path)


def figure_selected_gates(channels: pl.DataFrame, effect: pl.DataFrame, path: Path, save_figure) -> None:
    """Per direction, every channel of each MoIR run (first seed): how often Eq. 2 chose it (share of the routed
    examples' choices) against its gate's movement alpha - 0.5 at the end of training. Channels never chosen sit
    at share 0: only the chosen ones can have learnt anything."""
    import matplotlib.pyplot as plt  # noqa: PLC0415  (the report module chose the Agg backend)

    first_seed = effect.group_by(["dataset", "model", "placement", "arm"], maintain_order=True).agg(
        pl.col("run").first())["run"].to_list()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True, layout="constrained")
    for ax, direction, title in zip(axes, ("a", "b"), ("into the visual tokens (alpha_A)",
                                                       "into the text tokens (alpha_B)")):
        for run in first_seed:
            rows = channels.filter((pl.col("run") == run) & (pl.col("direction") == direction)
                                   & pl.col("alpha").is_not_null())
            if rows.height:
                ax.scatter(rows["share"].fill_null(0.0), rows["alpha"] - 0.5, s=8, label=run.split("__seed")[0])
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_title(f"gates {title}", fontsize=9)
        ax.set_xlabel("share of Eq. 2's choices at evaluation")
    axes[0].set_ylabel("alpha - 0.5 after training")
    labelled = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    if labelled:
        labelled[-1].legend(fontsize=5, loc="best")
    save_figure(fig, path)
