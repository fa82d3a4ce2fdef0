"""Predictions scored by each benchmark's protocol (`moir.metrics`, `moir.prompts.protocol`): option letters
(LLaVA's ScienceQA parser), the official VizWiz accuracy, exact match, and the judge's score for open-ended
questions (the judge's wiring is here too); then accuracy by protocol and the robustness of the normalised
predictions to noise.

Open-ended questions (MMBench-Video): a judge call that still fails after its retries is a failed judgement,
score -1, exactly like a reply that is not an integer (VLMEvalKit's convention: 0 in the "all" mean, left out of
the "valid" one); the stage stops only when more than `max_failed_share` of the calls fail. An answer is judged
correct when its score is >= `judge_correct_threshold` (default 2, "largely correct" in the judge prompt): the
share judged correct is what the paper reports as MMBench-Video accuracy."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from moir.evaluate import EvaluationError
from moir.evaluate.judge import (
    FAILED_SCORE,
    MAX_SCORE,
    JudgeError,
    OpenAIJudge,
    judge_prompt,
    parse_judge_score,
)
from moir.evaluate.store import PREDICTIONS_FILE
from moir.metrics import (
    FINE_DIMENSIONS,
    JUDGED_CORRECT_THRESHOLD,
    exact_match,
    judged_correct_share,
    mmbench_video_dimension_ratings,
    mmbench_video_mean_scores,
    normalize_answer,
    normalize_vizwiz_answer,
    parse_option_letter,
    robustness_summary,
    vizwiz_accuracy,
    vizwiz_predicts_unanswerable,
    vizwiz_unanswerability,
)
from moir.metrics.reliance import follows_hint, hint_label, hint_reliance, hinted_answer
from moir.prompts import OPTION_LETTERS, protocol

log = logging.getLogger("moir.evaluate")

JUDGE_CORRECT_SCORE = JUDGED_CORRECT_THRESHOLD  # the default of --judge-correct-threshold
MAX_FAILED_SHARE = 0.02  # the default of --judge-max-failed-share


def normalized_prediction(row: dict, prediction: str) -> str:
    """What the robustness metric compares: the parsed option letter, else the VQA-normalised text."""
    if row["choices"]:
        index = parse_option_letter(prediction, len(row["choices"]))
        if index is not None:
            return f"option:{OPTION_LETTERS[index]}"
    return f"text:{normalize_answer(prediction)}"

def judge_all(judge, cache, questions: list[str], answers: list[str], predictions: list[str],
              max_failed_share: float) -> list[tuple[str | None, int]]:
    """(reply, score) of each open-ended prediction, asking the judge only for what `cache` lacks. A call that
    fails (JudgeError after the judge's own retries) gives (None, -1) and is not cached, so a rerun asks again.
    Raises EvaluationError, naming the share, as soon as more than `max_failed_share` of all the calls failed."""
    allowed = max_failed_share * len(questions)
    results, failed, last_error = [], 0, None
    for question, answer, prediction in zip(questions, answers, predictions):
        key = cache.key(judge.name, question, answer, prediction)
        reply = cache.get(key)
        if reply is None:
            try:
                reply = judge(judge_prompt(question, answer, prediction))
            except JudgeError as error:
                failed += 1
                last_error = error
                if failed > allowed:
                    raise EvaluationError(
                        f"judge {judge.name}: {failed} of {len(questions)} calls failed, more than the allowed "
                        f"share judge.max_failed_share = {max_failed_share:g}; last error: {error}") from error
                results.append((None, FAILED_SCORE))
                continue
            cache.put(key, judge.name, reply)
        results.append((reply, parse_judge_score(reply)))
    if failed:
        log.warning("judge %s: %d of %d calls failed (scored -1); last error: %s", judge.name, failed,
                    len(questions), last_error)
    return results

def vizwiz_correct(prediction: str, answers: list[str]) -> bool:
    """Full VizWiz credit: the normalised prediction equals the released answer of at least 3 annotators (all,
    when fewer than 3 answered), as the official evaluation compares them."""
    predicted = normalize_vizwiz_answer(prediction)
    return sum(answer == predicted for answer in answers) >= min(3, len(answers))

def score_predictions(rows: list[dict], predictions: list[str], judge, judge_cache, *,
                      judge_correct_threshold: int = JUDGE_CORRECT_SCORE,
                      max_failed_share: float = MAX_FAILED_SHARE) -> list[dict]:
    """protocol, normalized, score (in the protocol's unit), correct and judge_reply for each example. An
    open-ended example's score is the judge's integer (-1: failed judgement), correct when >= the threshold."""
    scored = [{"protocol": protocol(row), "normalized": normalized_prediction(row, text), "judge_reply": None}
              for row, text in zip(rows, predictions)]
    open_ended = [i for i, item in enumerate(scored) if item["protocol"] == "open_ended"]
    if open_ended and judge is None:  # --judge defer: the rule `judge` scores them (moir.evaluate.judge_stage)
        for i in open_ended:
            scored[i].update(score=None, correct=False)
    elif open_ended:
        replies = judge_all(
            judge, judge_cache, [rows[i]["question"] for i in open_ended],
            [_answers(rows[i])[0] for i in open_ended], [predictions[i] for i in open_ended], max_failed_share,
        )
        for i, (reply, score) in zip(open_ended, replies):
            scored[i].update(judge_reply=reply, score=float(score), correct=score >= judge_correct_threshold)
    for row, text, item in zip(rows, predictions, scored):
        kind = item["protocol"]
        if kind == "multiple_choice":
            item["score"] = float(parse_option_letter(text, len(row["choices"])) == row["answer_index"])
            item["correct"] = item["score"] == 1.0
        elif kind == "vizwiz":
            answers = _answers(row)
            item["score"] = vizwiz_accuracy(text, answers)
            item["correct"] = vizwiz_correct(text, answers)
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

def _finite(value: float) -> float | None:
    """JSON has no NaN: the mean of nothing is null."""
    return None if math.isnan(value) else value

def judge_metrics(rows: list[dict], scored: list[dict], indices: list[int], judge_name: str | None,
                  threshold: int) -> dict:
    """MMBench-Video as VLMEvalKit reports it (mean score all/valid, per coarse and fine dimension) and the share
    judged correct at `threshold`, which is the entry's `accuracy` (in percent, the paper's unit)."""
    scores = [int(scored[i]["score"]) for i in indices]
    dimensions = [[d for d in rows[i]["category"].split("; ") if d] for i in indices]
    means = mmbench_video_mean_scores(scores)
    entry: dict[str, Any] = {
        "metric": f"judged correct: judge score >= {threshold} (of 0-{MAX_SCORE}); a failed judgement (-1) counts "
                  "as not correct",
        "judge": judge_name, "n": len(indices),
        "n_failed": sum(s < 0 for s in scores),
        "n_call_failed": sum(scored[i]["judge_reply"] is None for i in indices),
        "judge_correct_threshold": threshold,
        "n_judged_correct": sum(s >= threshold for s in scores),
        "accuracy": 100.0 * judged_correct_share(scores, threshold),
        "mean_score": _finite(means["all"]),  # VLMEvalKit "all": failed judgements count 0
        "mean_score_valid": _finite(means["valid"]),  # VLMEvalKit "valid": failed judgements left out
        "mean_score_definition": "VLMEvalKit's MMBench-Video mean judge score: 'all' counts a failed judgement "
                                 "(-1) as 0, 'valid' leaves it out",
    }
    if all(dimensions):  # the benchmark's rows list their capability dimensions; other open-ended data may not
        for i, listed in zip(indices, dimensions):
            unknown = [name for name in listed if name not in FINE_DIMENSIONS]
            if unknown:
                raise EvaluationError(f"example {rows[i]['id']}: field 'category' names unknown MMBench-Video "
                                      f"dimension(s) {unknown}")
        ratings = mmbench_video_dimension_ratings(scores, dimensions)
        entry["dimensions"] = {level: {name: _finite(value) for name, value in table.items()}
                               for level, table in ratings.items()}
    return entry

def vizwiz_metrics(rows: list[dict], scored: list[dict], predictions: list[str], indices: list[int]) -> dict:
    """The official VizWiz evaluation's numbers: accuracy overall and per answer type, and the unanswerability
    average precision and F1 (a question is unanswerable when its answer type is "unanswerable"; a generated
    answer declares it when it normalises to "unanswerable")."""
    scores = [scored[i]["score"] for i in indices]
    types: dict[str, list[float]] = defaultdict(list)
    for i in indices:
        types[rows[i]["answer_type"] or "unknown"].append(scored[i]["score"])
    answerable = [int(rows[i]["answer_type"] != "unanswerable") for i in indices]
    predicted = [0.0 if vizwiz_predicts_unanswerable(predictions[i]) else 1.0 for i in indices]
    unanswerability = vizwiz_unanswerability(answerable, predicted)
    return {
        "metric": "VizWiz accuracy (official VQAEval: the prediction normalised, the annotators' answers as "
                  "released, leave-one-out mean of min(matches/3, 1))",
        "n": len(indices), "accuracy": _percent(scores),
        "by_answer_type": {t: {"n": len(v), "accuracy": _percent(v)} for t, v in sorted(types.items())},
        "unanswerability": {
            "n_unanswerable": answerable.count(0),
            "n_predicted_unanswerable": predicted.count(0.0),
            "average_precision": 100.0 * unanswerability["average_precision"],
            "f1": 100.0 * unanswerability["f1_score"],
            "definition": "positive class: answer_type 'unanswerable'; a prediction says unanswerable when it "
                          "normalises to 'unanswerable' (answerability score 0, else 1); percent",
        },
    }

def accuracy_metrics(rows: list[dict], scored: list[dict], judge_name: str | None, predictions: list[str] | None = None,
                     judge_correct_threshold: int = JUDGE_CORRECT_SCORE) -> dict:
    """Accuracy by protocol (see the module docstring) and the headline mean per-example score in percent."""
    by_protocol: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(scored):
        by_protocol[item["protocol"]].append(i)
    result: dict[str, Any] = {}
    unit_scores = []
    for kind, indices in sorted(by_protocol.items()):
        if kind == "open_ended" and any(scored[i]["score"] is None for i in indices):  # --judge defer
            result[kind] = {"n": len(indices), "accuracy": None,
                            "deferred": "scored by the rule `judge` (moir.evaluate.judge_stage)"}
            continue
        if kind == "open_ended":
            result[kind] = judge_metrics(rows, scored, indices, judge_name, judge_correct_threshold)
            unit_scores += [float(scored[i]["correct"]) for i in indices]
            continue
        scores = [scored[i]["score"] for i in indices]
        unit_scores += scores
        if kind == "vizwiz":
            if predictions is None:
                raise ValueError("accuracy_metrics: VizWiz rows need the predictions (unanswerability)")
            entry = vizwiz_metrics(rows, scored, predictions, indices)
        else:
            entry = {"n": len(indices), "accuracy": _percent(scores)}
        if kind == "multiple_choice":
            entry["metric"] = "option letter (LLaVA ScienceQA parsing)"
            entry["n_unparsed"] = sum(scored[i]["normalized"].startswith("text:") for i in indices)
            image = [scored[i]["score"] for i in indices if rows[i]["has_image"]]
            entry["image_subset"] = {"n": len(image), "accuracy": _percent(image)}
        elif kind == "short_answer":
            entry["metric"] = "exact match of the normalised answer"
        categories: dict[str, list[float]] = defaultdict(list)
        for i in indices:
            if rows[i]["category"]:
                categories[rows[i]["category"]].append(scored[i]["score"])
        if categories:
            entry["by_category"] = {c: {"n": len(v), "accuracy": _percent(v)} for c, v in sorted(categories.items())}
        result[kind] = entry
    return {"value": _percent(unit_scores), "definition": "mean per-example score in percent (option letter and "
            f"exact match 0/1, VizWiz accuracy, judged correct (judge score >= {judge_correct_threshold}) 0/1)",
            "n": len(scored), "by_protocol": result}

def reliance_metrics(rows: list[dict], predictions: list[str], scored: list[dict]) -> dict | None:
    """Ground-truth text reliance (`moir.metrics.reliance`) on the questions whose hint is labelled right or wrong;
    None when no question is (a benchmark without synthetic hints)."""
    labels = [hint_label(row["category"]) for row in rows]
    if all(label is None for label in labels):
        return None
    followed = [label is False and follows_hint(row["choices"], text, hinted_answer(row["hint"]))
                for row, text, label in zip(rows, predictions, labels)]
    return {"definition": "accuracy (percent) on questions whose hint is right / wrong; hint_follow: percent of "
            "hint-wrong questions answered with the hinted answer",
            **hint_reliance(labels, [item["correct"] for item in scored], followed)}

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
