"""The judge stage of the workflow: judge an evaluation's open-ended answers on a CPU node, then write its final
predictions.parquet and metrics.json.

The GPU evaluation of a judged dataset (MMBench-Video) runs with `--judge defer` into `<evaluation>/predict/`: its
open-ended answers are left unscored (score null) and the GPU is released as soon as generation and analysis
end. This stage then asks the judge about every open-ended answer concurrently (moir.evaluate.judging: at most
`workers` requests in flight, retries with backoff, the reply cache, -1 for a call that keeps failing, the job
failing above `max_failed_share`), and merges the scores into the evaluation: each open-ended row gets its judge
score (0-3; null for a failed or unparsed judgement, which counts 0 in the mean, as in the in-job judge), its
correctness (score >= 2) and the reply; accuracy and the report's summary are recomputed from them
(moir.evaluate.scoring.accuracy_metrics). Everything else (analysis, ranks, robustness of normalised answers)
is the GPU job's, unchanged.

Outputs in --out-dir, each written atomically, metrics.json last:
    judge_scores.parquet   one row per open-ended answer (moir.evaluate.judging.SCORES_SCHEMA)
    predictions.parquet    the GPU job's predictions with the judged rows scored
    metrics.json           the GPU job's metrics with accuracy, judge and summary recomputed

    python -m moir.evaluate.judge_stage --predict-dir results/paper/eval/<name>/clean/predict \
        --manifest data/manifests/mmbench_video/test.parquet --out-dir results/paper/eval/<name>/clean \
        --cache results/paper/eval/<name>/clean/judge_cache.jsonl \
        --judge openai --judge-url https://api.openai.com/v1 --judge-model gpt-4-1106-preview [--workers 8] ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moir.data.manifest import read_manifest
from moir.evaluate import EvaluationError
from moir.evaluate.evaluation import summary
from moir.evaluate.judge import LocalJudge, OpenAIJudge
from moir.evaluate.judging import judge_predictions_file
from moir.evaluate.scoring import JUDGE_CORRECT_SCORE, accuracy_metrics
from moir.evaluate.store import METRICS_FILE, PREDICTIONS_FILE, PREDICTIONS_SCHEMA
from moir.models.fetch import locked_source
from moir.runtime import cli, setup_logging
from moir.settings import add_settings_argument, parse
from moir.storage import write_json_atomic, write_table_atomic

log = logging.getLogger("moir.evaluate.judge_stage")

SCORES_FILE = "judge_scores.parquet"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moir.evaluate.judge_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predict-dir", type=Path, required=True,
                        help="the GPU evaluation's output (--judge defer): predictions.parquet, metrics.json")
    parser.add_argument("--manifest", type=Path, required=True, help="the evaluated split's manifest")
    parser.add_argument("--out-dir", type=Path, required=True, help="where the final evaluation files go")
    parser.add_argument("--cache", type=Path, required=True, help="judge reply cache (JSON lines)")
    judge = parser.add_argument_group("judge")
    judge.add_argument("--judge", choices=("openai", "local"), required=True)
    judge.add_argument("--judge-url", help="base URL of an OpenAI-compatible endpoint (.../v1)")
    judge.add_argument("--judge-model", required=True, help="the endpoint's model name, or a local model")
    judge.add_argument("--judge-api-key-env", default="OPENAI_API_KEY")
    judge.add_argument("--hub-lock", type=Path, help="lock file of a local judge fetched by fetch_models")
    judge.add_argument("--hub-name", help="the local judge's name in --hub-lock")
    calls = parser.add_argument_group("calls")
    calls.add_argument("--workers", type=int, default=8, help="requests in flight at most")
    calls.add_argument("--max-retries", type=int, default=4)
    calls.add_argument("--backoff-s", type=float, default=1.0)
    calls.add_argument("--max-backoff-s", type=float, default=60.0)
    calls.add_argument("--max-failed-share", type=float, default=0.02)
    parser.add_argument("--judge-correct-threshold", type=int, default=JUDGE_CORRECT_SCORE,
                        help="an answer is judged correct when its score (0-3) is at least this")
    parser.add_argument("--log-level", default="INFO")
    add_settings_argument(parser)
    return parser


def make_judge(args: argparse.Namespace):
    if args.judge == "openai":
        if not args.judge_url:
            raise EvaluationError("--judge openai needs --judge-url")
        return OpenAIJudge(args.judge_url, args.judge_model, api_key=os.environ.get(args.judge_api_key_env),
                           max_retries=0)  # the retries are judging's, counted and reported
    return LocalJudge(locked_source(args.judge_model, "main" if args.hub_lock else None, args.hub_lock,
                                    args.hub_name))


def merge_judgements(predict_dir: Path, manifest: Path, scores_path: Path, out_dir: Path, judge_info: dict,
                     threshold: int = JUDGE_CORRECT_SCORE) -> dict:
    """The final predictions.parquet and metrics.json of a deferred evaluation (module docstring)."""
    predictions = pq.read_table(predict_dir / PREDICTIONS_FILE).to_pylist()
    metrics = json.loads((predict_dir / METRICS_FILE).read_text())
    scores = {row["id"]: row for row in pq.read_table(scores_path).to_pylist()}
    rows_by_id = {row["id"]: row for row in read_manifest(manifest).to_pylist()}
    missing = [p["id"] for p in predictions if p["id"] not in rows_by_id]
    if missing:
        raise EvaluationError(f"{predict_dir / PREDICTIONS_FILE}: {len(missing)} example(s) are not in {manifest}, "
                              f"e.g. {missing[:3]}")
    for prediction in predictions:
        if prediction["protocol"] != "open_ended":
            continue
        judged = scores.get(prediction["id"])
        if judged is None:
            raise EvaluationError(f"{scores_path}: no judgement of open-ended example {prediction['id']!r}")
        score = judged["judge_score"]
        prediction.update(score=float(score), correct=score >= threshold,  # -1: a failed judgement
                          judge_reply=judged["judge_reply"])
    rows = [rows_by_id[p["id"]] for p in predictions]
    metrics["evaluation"] = out_dir.name
    metrics["accuracy"] = accuracy_metrics(rows, predictions, judge_info["name"], judge_correct_threshold=threshold)
    metrics["judge"] = judge_info
    metrics["summary"] = summary(metrics)
    write_table_atomic(pa.Table.from_pylist(predictions, schema=PREDICTIONS_SCHEMA), out_dir / PREDICTIONS_FILE)
    write_json_atomic(metrics, out_dir / METRICS_FILE)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    setup_logging(args.log_level)
    for path in (args.predict_dir / PREDICTIONS_FILE, args.predict_dir / METRICS_FILE, args.manifest):
        if not path.is_file():
            raise EvaluationError(f"{path}: file not found")
    judge = make_judge(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    scores_path = args.out_dir / SCORES_FILE
    counts = judge_predictions_file(
        args.predict_dir / PREDICTIONS_FILE, args.manifest, scores_path, judge, args.cache, workers=args.workers,
        max_retries=args.max_retries, backoff_s=args.backoff_s, max_backoff_s=args.max_backoff_s,
        max_failed_share=args.max_failed_share,
    )
    info = {"name": judge.name, "prompt": "MMBench-Video (VLMEvalKit) 0-3 judge prompt", "cache": str(args.cache),
            "scores": str(scores_path), "stage": "moir.evaluate.judge_stage", "counts": counts,
            "calls": {key: getattr(args, key) for key in ("workers", "max_retries", "backoff_s", "max_backoff_s",
                                                          "max_failed_share")},
            "correct_threshold": args.judge_correct_threshold}
    metrics = merge_judgements(args.predict_dir, args.manifest, scores_path, args.out_dir, info,
                               args.judge_correct_threshold)
    log.info("%s: judged %d answers (%d failed); accuracy %.2f", args.out_dir, counts["n"],
             counts["n_call_failed"] + counts["n_unparsed"], metrics["accuracy"]["value"])
    return 0


if __name__ == "__main__":
    cli(main)
