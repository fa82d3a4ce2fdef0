"""Predictions scored by each benchmark's protocol (`moir.metrics`, `moir.prompts.protocol`): option letters,
VQA accuracy, exact match, and the judge's 0-3 score for open-ended questions (the judge's wiring is here too);
then accuracy by protocol and the robustness of the normalised predictions to noise."""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from moir.evaluate import EvaluationError
from moir.evaluate.judge import MAX_SCORE, OpenAIJudge, judge_predictions
from moir.evaluate.store import PREDICTIONS_FILE
from moir.metrics import (
    exact_match,
    normalize_answer,
    parse_option_letter,
    robustness_summary,
    vqa_accuracy,
    vqa_correct,
)
from moir.prompts import OPTION_LETTERS, protocol

JUDGE_CORRECT_SCORE = 2  # "largely correct" on the 0-3 scale


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
    if open_ended and judge is None:  # --judge defer: the rule `judge` scores them (moir.evaluate.judge_stage)
        for i in open_ended:
            scored[i].update(score=None, correct=False)
    elif open_ended:
        replies = judge_predictions(
            judge, judge_cache, [rows[i]["question"] for i in open_ended],
            [_answers(rows[i])[0] for i in open_ended], [predictions[i] for i in open_ended],
        )
        for i, (reply, score) in zip(open_ended, replies):
            scored[i].update(judge_reply=reply, score=None if score < 0 else float(score),  # < 0: failed judgement
                             correct=score >= JUDGE_CORRECT_SCORE)
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
