"""Evaluate a trained run (or a base model) on one manifest: predictions, accuracy, MDI/AEI, effective rank,
robustness.

Predictions are greedy generations through the model adapter with each benchmark's reference prompt
(`moir.prompts`, via `moir.dataset.load_examples`, exactly as in training). Three modes:

    clean      the inputs as they are (token cache or pixels). Also, unless --no-analysis: one teacher-forced
               forward pass over the model's own answer that records (i) per layer, the attention mass from the
               answer tokens to the prompt's text tokens T and visual tokens O (heads averaged; `moir.evaluate.attention`,
               SDPA stays on) and (ii) the effective rank of the visual and the text hidden states of each example
               at --rank-layer. With --base-eval (the base model's clean evaluation on the same manifest) the rank
               deltas (this run minus the base, same examples) are reported.
    noise      every image, and every frame of every video, replaced by Gaussian noise of the same size
               (N(127.5, 64^2) per pixel and channel, clipped to 0..255, uint8), drawn from a stream seeded by
               (--noise-seed, sha256 of the example id), so it does not depend on batching or order. Needs pixels
               (images from the manifest's media root, video frames from --frames), never the token cache. With
               --clean-eval (this run's clean evaluation) and --vision-split: the robustness metric, the rate of
               unchanged normalised predictions for all, vision-dependent and vision-irrelevant questions (over
               the questions that have an image or video: a text-only question has nothing to replace).
    no-image   the media removed (the prompt and any audio transcript stay). Also writes vision_split.parquet:
               a question is vision-irrelevant when the model answers it correctly without its image. Run it once
               on the base model; every run's noise evaluation reads that one split.

"Normalised" predictions: the parsed option letter for multiple-choice questions (an unparseable reply keeps its
normalised text), the official VQA normalisation otherwise. "Correct" (for the split): the right option; for
VizWiz full VQA credit (>= 3 annotators gave it); exact match for the synthetic short answers; judge score >= 2
("largely correct") for MMBench-Video.

Accuracy follows each benchmark's protocol (`moir.metrics`): ScienceQA option letters (all questions and the
image subset), VizWiz VQA accuracy (overall and per answer type), MMBench-Video judge scores 0-3 (mean score,
mean/3*100; `moir.evaluate.judge`, --judge openai|local), exact match for the synthetic short answers. The headline
`accuracy.value` is the mean per-example score in percent (option and exact match 0/1, VQA accuracy, judge/3).

Usage (one rule per (run, evaluation)):

    python -m moir.evaluate --model results/demo/base/tiny-llava [--revision REV] [--run results/demo/runs/<run>] \\
        --manifest data/manifests/synth-image/test.parquet \\
        [--cache-dir data/cache/synth-image/test/<enc>] [--frames data/media/<ds>/test/frames.parquet] \\
        [--transcripts data/transcripts/<ds>/test.parquet] \\
        --mode clean|noise|no-image --out-dir results/demo/eval/<run>/<evaluation> \\
        [--base-eval results/demo/eval/base/<evaluation>]                        (clean: rank deltas) \\
        [--clean-eval results/demo/eval/<run>/<clean evaluation>] \\
        [--vision-split results/demo/eval/base/<no-image evaluation>/vision_split.parquet]   (noise) \\
        [--judge openai --judge-url http://host:8000/v1 --judge-model NAME [--judge-api-key-env VAR] \\
         | --judge local --judge-model PATH_OR_HUB_ID] [--judge-cache FILE]      (open-ended questions)

Outputs in --out-dir, each written atomically once complete:

    predictions.parquet   one row per example: id, protocol, prediction, normalized, score, correct, judge_reply
                          (+ clean analysis: n_text, n_visual, n_answer (token counts), attn_text, attn_visual
                          (per decoder layer: attention mass on T / O, heads averaged, mean over answer tokens),
                          erank_text, erank_visual)
    metrics.json          every number and how it was measured (mode, layers, rank layer, split, judge, noise,
                          inputs); `summary` holds the report's columns (acc, mdi, aei, rank_delta_image,
                          rank_delta_text, unchanged_all, unchanged_vision_dependent, unchanged_vision_irrelevant)
    vision_split.parquet  (no-image mode) id, no_image_correct, vision_split

While it runs, predictions go to predictions.parts/ (one Parquet file per --flush-every examples); an interrupted
evaluation started again with the same arguments and inputs resumes there (other settings: the parts are
discarded). The parts are removed once metrics.json is written. Exit status 1 with a one-line error for a
malformed input file (named, with the field), a missing split or base evaluation, or an unreachable judge.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from moir.evaluate.attention import record_group_attention
from moir.data.manifest import ManifestError, read_manifest
from moir.cli import add_settings_argument, parse
from moir.dataset import load_examples
from moir.evaluate.judge import MAX_SCORE, JudgeCache, JudgeError, LocalJudge, OpenAIJudge, judge_predictions
from moir.metrics import (
    effective_rank,
    exact_match,
    layer_groups,
    modality_dominance,
    normalize_answer,
    parse_option_letter,
    robustness_summary,
    vision_irrelevant_split,
    vqa_accuracy,
    vqa_correct,
)
from moir.models import Example, load_vlm
from moir.prompts import OPTION_LETTERS, protocol
from moir.storage import write_table_atomic, write_text_atomic
from moir.train.loop import package_versions, resolve_device, resolve_dtype, setup_logging

log = logging.getLogger("moir.evaluate")

MODES = ("clean", "noise", "no-image")
NOISE_MEAN, NOISE_STD = 127.5, 64.0
JUDGE_CORRECT_SCORE = 2  # "largely correct" on the 0-3 scale
PREDICTIONS_FILE, METRICS_FILE, SPLIT_FILE, PARTS_DIR = (
    "predictions.parquet", "metrics.json", "vision_split.parquet", "predictions.parts"
)

RAW_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("prediction", pa.string(), nullable=False),
    pa.field("n_text", pa.int32()),
    pa.field("n_visual", pa.int32()),
    pa.field("n_answer", pa.int32()),
    pa.field("attn_text", pa.list_(pa.float64())),
    pa.field("attn_visual", pa.list_(pa.float64())),
    pa.field("erank_text", pa.float64()),
    pa.field("erank_visual", pa.float64()),
])
SCORED_FIELDS = [
    pa.field("protocol", pa.string(), nullable=False),
    pa.field("normalized", pa.string(), nullable=False),
    pa.field("score", pa.float64()),
    pa.field("correct", pa.bool_(), nullable=False),
    pa.field("judge_reply", pa.string()),
]
ANALYSIS_FIELDS = [name for name in RAW_SCHEMA.names if name not in ("id", "prediction")]
PREDICTIONS_SCHEMA = pa.schema([RAW_SCHEMA.field("id"), *SCORED_FIELDS, *[f for f in RAW_SCHEMA if f.name != "id"]])
SPLIT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("no_image_correct", pa.bool_(), nullable=False),
    pa.field("vision_split", pa.string(), nullable=False),
])


class EvaluationError(RuntimeError):
    """A bad input or setting; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------- inputs per mode


def _stream_seed(seed: int, example_id: str) -> list[int]:
    return [seed, int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "little")]


def noise_like(pixels: PIL.Image.Image | list[np.ndarray], seed: int, example_id: str):
    """Gaussian noise with the shape of an image (PIL) or of every frame of a video, seeded per example."""
    rng = np.random.default_rng(_stream_seed(seed, example_id))

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return np.clip(np.rint(rng.normal(NOISE_MEAN, NOISE_STD, size=shape)), 0, 255).astype(np.uint8)

    if isinstance(pixels, PIL.Image.Image):
        return PIL.Image.fromarray(draw((pixels.height, pixels.width, 3)))
    return [draw(np.asarray(frame).shape) for frame in pixels]


def prepare_example(example: Example, mode: str, noise_seed: int) -> Example:
    """The example as the mode presents it to the model (generation: no answer)."""
    example = dataclasses.replace(example, answer=None)
    if mode == "no-image" or example.media_kind == "none":
        return dataclasses.replace(example, media_kind="none", media=None, pixels=None, fps=None)
    if mode == "noise":
        if example.pixels is None:
            raise EvaluationError(f"example {example.id}: noise mode needs pixels, not cached features")
        return dataclasses.replace(example, media=None, pixels=noise_like(example.pixels, noise_seed, example.id))
    return example


# ---------------------------------------------------------------------------------------------- the model passes


def analyse_batch(adapter, examples: list[Example], predictions: list[str], hidden_index: int) -> list[dict]:
    """Attention mass per layer (answer tokens -> T and O) and effective ranks, teacher-forcing the predictions."""
    forced = [dataclasses.replace(example, answer=text) for example, text in zip(examples, predictions)]
    batch = adapter.collate(forced, with_answer=True)
    groups = {"text": batch["text_mask"], "visual": batch["visual_mask"]}
    with torch.no_grad(), record_group_attention(adapter.hf_model, batch["answer_mask"], groups) as record:
        output = adapter.forward(batch, output_hidden_states=True)
    hidden = output.hidden_states[hidden_index]
    results = []
    for row in range(len(examples)):
        n_text, n_visual = int(batch["text_mask"][row].sum()), int(batch["visual_mask"][row].sum())
        n_answer = int(batch["answer_mask"][row].sum())
        text_tokens = hidden[row][batch["text_mask"][row].to(hidden.device)]
        visual_tokens = hidden[row][batch["visual_mask"][row].to(hidden.device)]
        mass = record.mass[row]
        results.append({
            "n_text": n_text,
            "n_visual": n_visual,
            "n_answer": n_answer,
            "attn_text": mass[:, 0].tolist() if n_answer else None,
            "attn_visual": mass[:, 1].tolist() if n_answer else None,
            "erank_text": effective_rank(text_tokens) if n_text else None,
            "erank_visual": effective_rank(visual_tokens) if n_visual else None,
        })
    return results


def analyse(adapter, examples: list[Example], predictions: list[str], hidden_index: int) -> list[dict]:
    """`analyse_batch`, one example at a time for a batch the tokenizer cannot teacher-force as a whole."""
    try:
        return analyse_batch(adapter, examples, predictions, hidden_index)
    except ValueError as error:
        if len(examples) == 1:
            log.warning("example %s: no attention/rank analysis: %s", examples[0].id, error)
            return [dict.fromkeys(ANALYSIS_FIELDS)]
        return [result for i in range(len(examples))
                for result in analyse(adapter, examples[i:i + 1], predictions[i:i + 1], hidden_index)]


# ---------------------------------------------------------------------------------------------- resumable store


class PartStore:
    """Predictions written as they are made: Parquet parts in `<out-dir>/predictions.parts/`, tagged with the
    evaluation's settings so that only a run with identical settings resumes from them."""

    def __init__(self, out_dir: Path, settings: dict) -> None:
        self.dir = out_dir / PARTS_DIR
        self.settings = settings
        settings_file = self.dir / "settings.json"
        if self.dir.exists():
            previous = json.loads(settings_file.read_text()) if settings_file.is_file() else None
            if previous != settings:
                log.warning("%s: made with other settings; discarded", self.dir)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(settings_file, json.dumps(settings, indent=2, sort_keys=True) + "\n")

    def rows(self) -> dict[str, dict]:
        done = {}
        for part in sorted(self.dir.glob("part-*.parquet")):
            try:
                table = pq.read_table(part, schema=RAW_SCHEMA)
            except (pa.ArrowInvalid, OSError) as error:
                raise EvaluationError(f"{part}: unreadable prediction part ({error}); delete it to resume") from error
            done.update((row["id"], row) for row in table.to_pylist())
        return done

    def write(self, rows: list[dict]) -> None:
        index = len(list(self.dir.glob("part-*.parquet")))
        path = self.dir / f"part-{index:06d}.parquet"
        write_table_atomic(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), path)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _content_fingerprint(path: str | os.PathLike | None, full_hash_limit: int = 256 << 20) -> str | None:
    """sha256 over a file's or a directory's files: contents up to `full_hash_limit` bytes, else size and mtime."""
    if path is None or not Path(path).exists():
        return None  # a hub id: its revision is the identity
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted([root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())):
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if file != root else file.name}\0{stat.st_size}\0".encode())
        if stat.st_size <= full_hash_limit:
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- scoring


def normalized_prediction(row: dict, prediction: str) -> str:
    """What the robustness metric compares: the parsed option letter, else the VQA-normalised text."""
    if row["choices"]:
        index = parse_option_letter(prediction, len(row["choices"]))
        if index is not None:
            return f"option:{OPTION_LETTERS[index]}"
    return f"text:{normalize_answer(prediction)}"


def score_predictions(rows: list[dict], predictions: list[str], judge, judge_cache) -> list[dict]:
    """protocol, normalized, score (in the protocol's unit), correct and judge_reply for each example."""
    scored = [{"protocol": protocol(row), "normalized": normalized_prediction(row, text), "judge_reply": None}
              for row, text in zip(rows, predictions)]
    open_ended = [i for i, item in enumerate(scored) if item["protocol"] == "open_ended"]
    if open_ended:
        replies = judge_predictions(
            judge, judge_cache, [rows[i]["question"] for i in open_ended],
            [_answers(rows[i])[0] for i in open_ended], [predictions[i] for i in open_ended],
        )
        for i, (reply, score) in zip(open_ended, replies):
            scored[i].update(judge_reply=reply, score=None if score is None else float(score),
                             correct=score is not None and score >= JUDGE_CORRECT_SCORE)
    for row, text, item in zip(rows, predictions, scored):
        kind = item["protocol"]
        if kind == "multiple_choice":
            item["score"] = float(parse_option_letter(text, len(row["choices"])) == row["answer_index"])
            item["correct"] = item["score"] == 1.0
        elif kind == "vizwiz":
            answers = _answers(row)
            item["score"] = vqa_accuracy(text, answers)
            item["correct"] = vqa_correct(text, answers)
        elif kind == "short_answer":
            item["score"] = exact_match(text, _answers(row))
            item["correct"] = item["score"] == 1.0
    return scored


def _answers(row: dict) -> list[str]:
    if not row["answers"]:
        raise EvaluationError(f"example {row['id']}: no reference answers (field 'answers' is empty; "
                              "a split with private answers cannot be scored)")
    return row["answers"]


def _percent(values: list[float]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def accuracy_metrics(rows: list[dict], scored: list[dict], judge_name: str | None) -> dict:
    """Accuracy by protocol (see the module docstring) and the headline mean per-example score in percent."""
    by_protocol: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(scored):
        by_protocol[item["protocol"]].append(i)
    result: dict[str, Any] = {}
    unit_scores = []
    for kind, indices in sorted(by_protocol.items()):
        scores = [scored[i]["score"] for i in indices]
        if kind == "open_ended":
            valid = [s for s in scores if s is not None]
            all_scores = [s if s is not None else 0.0 for s in scores]
            unit_scores += [s / MAX_SCORE for s in all_scores]
            result[kind] = {
                "metric": "judge score 0-3 (failed judgements count 0 in mean_score, are left out of "
                          "mean_score_valid)",
                "judge": judge_name, "n": len(indices), "n_failed": len(scores) - len(valid),
                "mean_score": sum(all_scores) / len(all_scores),
                "mean_score_valid": sum(valid) / len(valid) if valid else None,
                "accuracy": 100.0 * sum(all_scores) / (MAX_SCORE * len(all_scores)),
            }
            continue
        unit_scores += scores
        entry: dict[str, Any] = {"n": len(indices), "accuracy": _percent(scores)}
        if kind == "multiple_choice":
            entry["metric"] = "option letter (LLaVA ScienceQA parsing)"
            entry["n_unparsed"] = sum(scored[i]["normalized"].startswith("text:") for i in indices)
            image = [scored[i]["score"] for i in indices if rows[i]["has_image"]]
            entry["image_subset"] = {"n": len(image), "accuracy": _percent(image)}
        elif kind == "vizwiz":
            entry["metric"] = "VQA accuracy (leave-one-out min(matches/3, 1), official normalisation)"
            types: dict[str, list[float]] = defaultdict(list)
            for i in indices:
                types[rows[i]["answer_type"] or "unknown"].append(scored[i]["score"])
            entry["by_answer_type"] = {t: {"n": len(v), "accuracy": _percent(v)} for t, v in sorted(types.items())}
        else:
            entry["metric"] = "exact match of the normalised answer"
        categories: dict[str, list[float]] = defaultdict(list)
        for i in indices:
            if rows[i]["category"]:
                categories[rows[i]["category"]].append(scored[i]["score"])
        if categories:
            entry["by_category"] = {c: {"n": len(v), "accuracy": _percent(v)} for c, v in sorted(categories.items())}
        result[kind] = entry
    return {"value": _percent(unit_scores), "definition": "mean per-example score in percent (option letter and "
            "exact match 0/1, VQA accuracy, judge score/3)", "n": len(scored), "by_protocol": result}


def dominance_metrics(raw: list[dict]) -> dict:
    """MDI and AEI over all layers and the early/middle/late thirds: per example, the per-layer masses averaged
    over the range's layers, then MDI/AEI; mean (and median) over the examples with both groups and an answer."""
    usable = [r for r in raw if r["attn_text"] is not None and r["n_text"] and r["n_visual"]
              and not any(math.isnan(v) for v in r["attn_text"] + r["attn_visual"])]
    if not usable:
        return {"n": 0, "note": "no example with text tokens, visual tokens and answer tokens"}
    groups = layer_groups(len(usable[0]["attn_text"]))
    mdi, aei = {}, {}
    for name, layers in groups.items():
        if not layers:
            mdi[name] = aei[name] = None
            continue
        values = []
        for r in usable:
            a_text = sum(r["attn_text"][layer] for layer in layers) / len(layers)
            a_visual = sum(r["attn_visual"][layer] for layer in layers) / len(layers)
            if a_text + a_visual > 0:
                values.append(modality_dominance(a_text, r["n_text"], a_visual, r["n_visual"]))
        finite = [v for v in values if math.isfinite(v[0])]
        mdi[name] = {"mean": statistics.fmean(v[0] for v in finite) if finite else None,
                     "median": statistics.median(v[0] for v in finite) if finite else None,
                     "n": len(finite), "n_infinite": len(values) - len(finite)}
        aei[name] = {"mean": statistics.fmean(v[1] for v in values) if values else None,
                     "median": statistics.median(v[1] for v in values) if values else None, "n": len(values)}
    return {
        "n": len(usable),
        "answer_tokens": "the model's own greedy answer, teacher-forced (its tokens and the end-of-turn token)",
        "groups": {"T": "the prompt's text tokens (adapter text_mask)", "O": "visual/video tokens (visual_mask)"},
        "heads": "averaged",
        "aggregation": "per example: attention mass averaged over answer tokens, then over the range's layers; "
                       "MDI/AEI per example; mean and median over examples",
        "layers": groups,
        "mdi": mdi,
        "aei": aei,
    }


def rank_metrics(raw: list[dict], ids: list[str], hidden_index: int, n_hidden: int, base: dict | None) -> dict:
    """Mean effective rank of the visual and text hidden states; deltas against the base evaluation (`base`, from
    `read_evaluation`) on the examples both have."""
    def mean_of(values: dict[str, float | None]) -> dict:
        present = [v for v in values.values() if v is not None]
        return {"mean": statistics.fmean(present) if present else None, "n": len(present)}

    ours = {kind: {i: r[f"erank_{kind}"] for i, r in zip(ids, raw)} for kind in ("visual", "text")}
    result: dict[str, Any] = {
        "hidden_state_index": hidden_index,
        "n_hidden_states": n_hidden,
        "layer": "hidden_states[0] is the embedding output, hidden_states[-1] the last decoder layer's",
        "definition": "Roy & Vetterli exp(H(sigma/sum sigma)) of each example's (tokens x D) hidden states, "
                      "uncentered; averaged over examples",
        "visual": mean_of(ours["visual"]),
        "text": mean_of(ours["text"]),
        "delta": None,
    }
    if base is None:
        return result
    base_rank = base["metrics"]["effective_rank"]
    if base_rank["hidden_state_index"] != hidden_index or base_rank["n_hidden_states"] != n_hidden:
        raise EvaluationError(
            f"{base['directory'] / METRICS_FILE}: field 'effective_rank.hidden_state_index' is "
            f"{base_rank['hidden_state_index']} of {base_rank['n_hidden_states']}, this evaluation uses "
            f"{hidden_index} of {n_hidden}")
    base_rows = {row["id"]: row for row in base["predictions"]}
    delta = {"base_evaluation": str(base["directory"])}
    for kind in ("visual", "text"):
        pairs = [(value, base_rows[i][f"erank_{kind}"]) for i, value in ours[kind].items()
                 if value is not None and i in base_rows and base_rows[i][f"erank_{kind}"] is not None]
        delta[kind] = {"mean": statistics.fmean(a - b for a, b in pairs) if pairs else None,
                       "base_mean": statistics.fmean(b for _, b in pairs) if pairs else None, "n": len(pairs)}
    result["delta"] = delta
    return result


def robustness_metrics(clean: dict, split: dict[str, str], split_path: Path, rows: list[dict],
                       scored: list[dict]) -> dict:
    """Unchanged normalised predictions, clean (this run's clean evaluation, from `read_evaluation`) vs noise
    (`scored`), over the examples that have media (a question without an image has nothing to replace), split by
    the shared vision split (`read_vision_split`)."""
    clean_eval = clean["directory"]
    ids = [row["id"] for row in rows if row["media_kind"] != "none"]
    if not ids:
        raise EvaluationError("robustness: no evaluated example has an image or a video")
    clean_normalized = {row["id"]: row["normalized"] for row in clean["predictions"]}
    missing = [i for i in ids if i not in clean_normalized]
    if missing:
        raise EvaluationError(f"{clean_eval / PREDICTIONS_FILE}: {len(missing)} example(s) of this evaluation are "
                              f"missing, e.g. {missing[:5]}")
    unsplit = [i for i in ids if i not in split]
    if unsplit:
        raise EvaluationError(f"{split_path}: {len(unsplit)} evaluated example(s) are not in the split, "
                              f"e.g. {unsplit[:5]}")
    noisy = {row["id"]: item["normalized"] for row, item in zip(rows, scored)}
    return {
        "clean_evaluation": str(clean_eval), "vision_split": str(split_path),
        "compared": "normalised predictions (parsed option letter, else VQA-normalised text)",
        "n_without_media": len(rows) - len(ids),
        **robustness_summary({i: clean_normalized[i] for i in ids}, {i: noisy[i] for i in ids}, split),
    }


def read_evaluation(directory: Path, *, needs_ranks: bool = False) -> dict:
    """A finished clean evaluation: its predictions (list of rows), metrics and directory, checked; errors name the
    file and the field. `needs_ranks`: it must hold effective ranks (clean mode with analysis)."""
    predictions_path, metrics_path = directory / PREDICTIONS_FILE, directory / METRICS_FILE
    for path in (predictions_path, metrics_path):
        if not path.is_file():
            raise EvaluationError(f"{path}: not found (is {directory} a finished evaluation?)")
    try:
        table = pq.read_table(predictions_path)
    except (pa.ArrowInvalid, OSError) as error:
        raise EvaluationError(f"{predictions_path}: not a readable Parquet file ({error})") from error
    for field in PREDICTIONS_SCHEMA:
        if field.name not in table.column_names:
            raise EvaluationError(f"{predictions_path}: missing column {field.name!r}")
        if not table.schema.field(field.name).type.equals(field.type):
            raise EvaluationError(f"{predictions_path}: column {field.name!r} has type "
                                  f"{table.schema.field(field.name).type}, expected {field.type}")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{metrics_path}: not valid JSON ({error})") from error
    if metrics.get("mode") != "clean":
        raise EvaluationError(f"{metrics_path}: field 'mode' is {metrics.get('mode')!r}, expected 'clean'")
    if needs_ranks and not metrics.get("effective_rank"):
        raise EvaluationError(f"{metrics_path}: field 'effective_rank' is empty (a base evaluation for rank deltas "
                              "needs clean mode with analysis)")
    return {"predictions": table.to_pylist(), "metrics": metrics, "directory": directory}


def read_vision_split(path: Path) -> dict[str, str]:
    """id -> "vision_dependent" | "vision_irrelevant" from a no-image evaluation's vision_split.parquet."""
    if not path.is_file():
        raise EvaluationError(f"{path}: vision split not found (run the base model's no-image evaluation first)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise EvaluationError(f"{path}: not a readable Parquet file ({error})") from error
    for name in ("id", "vision_split"):
        if name not in table.column_names:
            raise EvaluationError(f"{path}: missing column {name!r}")
    split = dict(zip(table.column("id").to_pylist(), table.column("vision_split").to_pylist()))
    bad = sorted({v for v in split.values()} - {"vision_dependent", "vision_irrelevant"})
    if bad:
        raise EvaluationError(f"{path}: column 'vision_split' has unknown value(s) {bad}")
    return split


# ---------------------------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moir.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="base model: a save_pretrained directory or a hub id")
    model.add_argument("--revision", help="hub revision (branch, tag or commit) of --model; a directory ignores it")
    model.add_argument("--run", type=Path, help="a LoRA run's directory (moir.train: LoRA + router); omit for "
                       "the base model")
    model.add_argument("--run-name", help="name recorded in metrics.json (default: the run directory's name, "
                       "or 'base')")
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", type=Path, required=True)
    data.add_argument("--cache-dir", type=Path, help="encoder-token cache (clean and no-image modes; else pixels)")
    data.add_argument("--frames", type=Path, help="frames table of `moir.media extract` (videos from pixels)")
    data.add_argument("--transcripts", type=Path, help="ASR transcripts (the audio as text)")
    data.add_argument("--limit", type=int, help="evaluate only the first N examples (smoke runs)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--mode", choices=MODES, default="clean")
    evaluation.add_argument("--noise-seed", type=int, default=0)
    evaluation.add_argument("--max-new-tokens", type=int, default=16)
    evaluation.add_argument("--batch-size", type=int, default=8)
    evaluation.add_argument("--no-analysis", action="store_true", help="clean mode: skip MDI/AEI and ranks")
    evaluation.add_argument("--rank-layer", type=int, default=-1,
                            help="index into the hidden states (0 = embeddings, -1 = last layer)")
    evaluation.add_argument("--base-eval", type=Path, help="the base model's clean evaluation dir (rank deltas)")
    evaluation.add_argument("--clean-eval", type=Path, help="noise mode: this run's clean evaluation dir")
    evaluation.add_argument("--vision-split", type=Path, help="noise mode: the base model's vision_split.parquet")
    judge = parser.add_argument_group("judge (open-ended questions: MMBench-Video)")
    judge.add_argument("--judge", choices=("openai", "local"), help="openai-compatible endpoint or a local model")
    judge.add_argument("--judge-url", help="base URL of the endpoint, e.g. http://localhost:8000/v1")
    judge.add_argument("--judge-model", help="the endpoint's model name, or the local model's path / hub id")
    judge.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                       help="environment variable holding the endpoint's API key (unset: no key sent)")
    judge.add_argument("--judge-cache", type=Path, help="reply cache file (default: <out-dir>/judge_cache.jsonl)")
    system = parser.add_argument_group("system")
    system.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    system.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    system.add_argument("--out-dir", type=Path, required=True)
    system.add_argument("--flush-every", type=int, default=64, help="examples per prediction part written")
    system.add_argument("--log-level", default="INFO")
    add_settings_argument(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every argument checked before any model is loaded; EvaluationError names the bad one."""
    for name in ("manifest", "frames", "transcripts"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            raise EvaluationError(f"--{name}: file not found: {path}")
    for name in ("adapter", "cache_dir", "base_eval", "clean_eval"):
        path = getattr(args, name)
        if path is not None and not path.is_dir():
            raise EvaluationError(f"--{name.replace('_', '-')}: directory not found: {path}")
    for name in ("limit", "batch_size", "max_new_tokens", "flush_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.mode == "noise" and args.cache_dir is not None:
        raise EvaluationError("--cache-dir: noise mode replaces the pixels, so it cannot read the token cache")
    if args.mode != "noise" and (args.clean_eval or args.vision_split):
        raise EvaluationError("--clean-eval and --vision-split belong to noise mode")
    if (args.clean_eval is None) != (args.vision_split is None):
        raise EvaluationError("robustness needs both --clean-eval and --vision-split")
    if args.base_eval is not None and (args.mode != "clean" or args.no_analysis):
        raise EvaluationError("--base-eval (rank deltas) needs clean mode with analysis")
    if args.judge == "openai" and not (args.judge_url and args.judge_model):
        raise EvaluationError("--judge openai needs --judge-url and --judge-model")
    if args.judge == "local" and not args.judge_model:
        raise EvaluationError("--judge local needs --judge-model (a path or hub id)")


def make_judge(args: argparse.Namespace, needed: bool):
    """The judge (or None when no question needs one); an OpenAI endpoint is probed before any generation."""
    if not needed:
        return None
    if args.judge is None:
        raise EvaluationError(f"{args.manifest}: the manifest has open-ended questions; pass --judge openai|local")
    if args.judge == "openai":
        judge = OpenAIJudge(args.judge_url, args.judge_model, api_key=os.environ.get(args.judge_api_key_env))
        judge.check_reachable()
        return judge
    return args.judge_model  # a local judge is loaded after generation, when the evaluated model is gone


def predict(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Load the model, generate (and analyse) every example not yet in the parts; the model is freed on return.

    Returns the manifest rows evaluated, their raw prediction rows (RAW_SCHEMA), the adapter's description, the
    hidden-state index of the ranks and the number of hidden states, and the part store."""
    adapter = load_vlm(args.model, device=str(device), dtype=dtype, revision=args.revision)
    adapter_description = None
    if args.adapter is not None:
        try:
            adapter.load_trainable(args.adapter)
        except (FileNotFoundError, KeyError, json.JSONDecodeError) as error:
            raise EvaluationError(f"--adapter {args.adapter}: not a saved run adapter ({error})") from error
        adapter_description = json.loads((args.adapter / "moir_adapter.json").read_text())
    adapter.model.eval()
    if adapter.router is not None:
        adapter.router.eval()

    examples = load_examples(
        args.manifest, cache_dir=None if args.mode == "noise" else args.cache_dir, frames_path=args.frames,
        transcripts_path=args.transcripts, adapter=adapter, with_answer=False, limit=args.limit,
    )
    if len(examples) == 0:
        raise EvaluationError(f"{args.manifest}: no examples to evaluate")
    ids = [row["id"] for row in examples.rows]
    analysis = args.mode == "clean" and not args.no_analysis
    n_hidden = adapter.hf_model.config.get_text_config().num_hidden_layers + 1
    hidden_index = args.rank_layer if args.rank_layer >= 0 else n_hidden + args.rank_layer
    if not 0 <= hidden_index < n_hidden:
        raise EvaluationError(f"--rank-layer {args.rank_layer} is outside the {n_hidden} hidden states")

    settings = {
        "model": str(args.model), "revision": args.revision, "model_fingerprint": _content_fingerprint(args.model),
        "adapter": str(args.adapter) if args.adapter else None,
        "adapter_fingerprint": _content_fingerprint(args.adapter),
        "manifest_fingerprint": _content_fingerprint(args.manifest),
        "cache_fingerprint": _content_fingerprint(args.cache_dir) if args.mode != "noise" else None,
        "frames_fingerprint": _content_fingerprint(args.frames),
        "transcripts_fingerprint": _content_fingerprint(args.transcripts),
        "mode": args.mode, "noise_seed": args.noise_seed if args.mode == "noise" else None,
        "max_new_tokens": args.max_new_tokens, "analysis": analysis, "hidden_index": hidden_index if analysis else None,
        "dtype": str(dtype), "limit": args.limit,
    }
    store = PartStore(args.out_dir, settings)
    done = store.rows()
    todo = [i for i, example_id in enumerate(ids) if example_id not in done]
    if done:
        log.info("resuming: %d of %d examples already predicted", len(ids) - len(todo), len(ids))
    pending: list[dict] = []
    with tqdm(total=len(ids), initial=len(ids) - len(todo), desc=f"evaluate {args.out_dir.name}") as progress:
        for start in range(0, len(todo), args.batch_size):
            indices = todo[start:start + args.batch_size]
            batch_examples = [prepare_example(examples[i], args.mode, args.noise_seed) for i in indices]
            predictions = adapter.generate(adapter.collate(batch_examples, with_answer=False), args.max_new_tokens)
            details = (analyse(adapter, batch_examples, predictions, hidden_index) if analysis
                       else [dict.fromkeys(ANALYSIS_FIELDS)] * len(indices))
            pending += [{"id": ids[i], "prediction": text, **detail}
                        for i, text, detail in zip(indices, predictions, details)]
            if len(pending) >= args.flush_every:
                store.write(pending)
                pending = []
            progress.update(len(indices))
    if pending:
        store.write(pending)
    done = store.rows()
    return {
        "rows": examples.rows, "raw": [done[example_id] for example_id in ids], "analysis": analysis,
        "adapter_description": adapter_description, "hidden_index": hidden_index, "n_hidden": n_hidden,
        "store": store,
    }


def evaluate(args: argparse.Namespace) -> dict:
    """The whole evaluation (module docstring); returns the metrics written to metrics.json."""
    check_args(args)
    started = time.perf_counter()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    try:
        manifest = read_manifest(args.manifest)
    except ManifestError as error:
        raise EvaluationError(str(error)) from error
    manifest_rows = manifest.to_pylist()
    if (args.mode == "no-image" and args.cache_dir is None and args.frames is None
            and any(row["media_kind"] == "video" for row in manifest_rows)):
        raise EvaluationError(f"{args.manifest}: no-image mode on videos needs --cache-dir (or --frames) to know "
                              "which videos decoded, so that it evaluates the clean evaluation's examples")
    needs_judge = any(protocol(row) == "open_ended" for row in manifest_rows)
    judge = make_judge(args, needs_judge)
    base = read_evaluation(args.base_eval, needs_ranks=True) if args.base_eval else None
    clean = read_evaluation(args.clean_eval) if args.clean_eval else None
    split = read_vision_split(args.vision_split) if args.vision_split else None
    args.out_dir.mkdir(parents=True, exist_ok=True)

    predicted = predict(args, device, dtype)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows, raw, analysis = predicted["rows"], predicted["raw"], predicted["analysis"]
    hidden_index, n_hidden = predicted["hidden_index"], predicted["n_hidden"]
    ids = [row["id"] for row in rows]

    judge_name = None
    judge_cache = None
    if needs_judge:
        if isinstance(judge, str):
            judge = LocalJudge(judge, device=str(device))
        judge_name = judge.name
        judge_cache = JudgeCache(args.judge_cache or args.out_dir / "judge_cache.jsonl")
    scored = score_predictions(rows, [r["prediction"] for r in raw], judge, judge_cache)

    metrics: dict[str, Any] = {
        "stage": "evaluate",
        "run": args.run_name or (args.adapter.name if args.adapter else "base"),
        "evaluation": args.out_dir.name,
        "mode": args.mode,
        "model": str(args.model),
        "revision": args.revision,
        "adapter": str(args.adapter) if args.adapter else None,
        "adapter_description": predicted["adapter_description"],
        "manifest": str(args.manifest),
        "dataset": rows[0]["dataset"],
        "split": rows[0]["split"],
        "n_examples": len(rows),
        "limit": args.limit,
        "inputs": {"cache_dir": str(args.cache_dir) if args.cache_dir else None,
                   "frames": str(args.frames) if args.frames else None,
                   "transcripts": str(args.transcripts) if args.transcripts else None},
        "generation": {"decoding": "greedy", "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                       "prompts": "moir.prompts (each benchmark's reference protocol)"},
        "noise": {"seed": args.noise_seed, "distribution": f"N({NOISE_MEAN}, {NOISE_STD}^2) per pixel and channel, "
                  "rounded and clipped to 0..255", "stream": "numpy default_rng([seed, sha256(example id)])"}
        if args.mode == "noise" else None,
        "accuracy": accuracy_metrics(rows, scored, judge_name),
        "judge": {"name": judge_name, "prompt": "MMBench-Video (VLMEvalKit) 0-3 judge prompt",
                  "cache": str(judge_cache.path)} if judge_name else None,
        "dominance": dominance_metrics(raw) if analysis else None,
        "effective_rank": rank_metrics(raw, ids, hidden_index, n_hidden, base) if analysis else None,
        "robustness": None,
        "vision_split": None,
    }
    if clean is not None:
        metrics["robustness"] = robustness_metrics(clean, split, args.vision_split, rows, scored)
    split_table = None
    if args.mode == "no-image":
        made = vision_irrelevant_split({i: item["correct"] for i, item in zip(ids, scored)})
        split_table = pa.Table.from_pylist(
            [{"id": i, "no_image_correct": item["correct"], "vision_split": made[i]} for i, item in zip(ids, scored)],
            schema=SPLIT_SCHEMA)
        metrics["vision_split"] = {
            "path": str(args.out_dir / SPLIT_FILE),
            "definition": "vision_irrelevant when this model answers correctly with the media removed",
            "n_vision_irrelevant": sum(v == "vision_irrelevant" for v in made.values()),
            "n_vision_dependent": sum(v == "vision_dependent" for v in made.values()),
        }
    metrics["summary"] = summary(metrics)
    metrics["environment"] = {"device": str(device), "dtype": str(dtype), "packages": package_versions(),
                              "wall_time_s": round(time.perf_counter() - started, 3)}

    table = pa.Table.from_pylist([{**r, **s} for r, s in zip(raw, scored)], schema=PREDICTIONS_SCHEMA)
    write_table_atomic(table, args.out_dir / PREDICTIONS_FILE)
    if split_table is not None:
        write_table_atomic(split_table, args.out_dir / SPLIT_FILE)
    write_text_atomic(args.out_dir / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    predicted["store"].remove()
    log.info("%s: accuracy %.2f over %d examples", args.out_dir, metrics["accuracy"]["value"], len(rows))
    return metrics


def summary(metrics: dict) -> dict:
    """The report's columns (names as in the paper's tables) from the detailed metrics."""
    dominance, rank, robust = metrics["dominance"], metrics["effective_rank"], metrics["robustness"]

    def pick(section, *keys):
        for key in keys:
            if section is None:
                return None
            section = section.get(key)
        return section

    return {
        "acc": metrics["accuracy"]["value"],
        "mdi": pick(dominance, "mdi", "all", "mean"),
        "aei": pick(dominance, "aei", "all", "mean"),
        "rank_image": pick(rank, "visual", "mean"),
        "rank_text": pick(rank, "text", "mean"),
        "rank_delta_image": pick(rank, "delta", "visual", "mean"),
        "rank_delta_text": pick(rank, "delta", "text", "mean"),
        "unchanged_all": pick(robust, "all", "unchanged_rate"),
        "unchanged_vision_dependent": pick(robust, "vision_dependent", "unchanged_rate"),
        "unchanged_vision_irrelevant": pick(robust, "vision_irrelevant", "unchanged_rate"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    args.adapter = args.run  # the evaluation code's name for the LoRA run directory
    setup_logging(args.log_level)
    try:
        evaluate(args)
    except (EvaluationError, JudgeError, ManifestError, ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
