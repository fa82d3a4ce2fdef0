"""The judge as its own stage: score an evaluation's open-ended predictions on a CPU node, concurrently.

The GPU evaluation writes predictions.parquet and stops; this stage then asks the judge (moir.evaluate.judge:
an OpenAI-compatible endpoint or a local model) about every open-ended prediction with at most `workers` requests
in flight, retrying a failed call with exponential backoff (backoff_s, 2 backoff_s, 4 backoff_s, ... at most
max_backoff_s). Replies go through the JudgeCache, so a rerun asks only for what it does not have. A call that
still fails after `max_retries` retries scores -1 (status "call_failed") instead of aborting, unless more than
`max_failed_share` of the calls fail: then the stage raises, naming the share, and writes nothing (the replies it
got are in the cache). A reply that is not a bare 0-3 also scores -1 (status "unparsed"), VLMEvalKit's convention.

Output (written atomically, complete or absent): a Parquet table, one row per open-ended prediction:
    id str, judge_reply str (null when the call failed), judge_score int64 (the judge's integer: 0-3 asked, any given is kept; -1: no integer), status str
    ("ok" | "unparsed" | "call_failed"), error str (the last error of a failed call)
with the judge's name in the schema metadata (`moir.judge`).

Use an OpenAIJudge built with max_retries=0 here: the retries are this module's, counted and reported.

CLI (a CPU job after the GPU evaluation):
    python -m moir.evaluate.judging --predictions results/.../predictions.parquet --manifest data/manifests/D/S.parquet \
        --out results/.../judge_scores.parquet --summary results/.../judge_summary.json --cache data/judge/cache.jsonl \
        --judge openai --judge-url http://host:8000/v1 --judge-model NAME [--judge-api-key-env VAR] \
        [--workers 8] [--max-retries 4] [--backoff-s 1] [--max-failed-share 0.02]
    (--judge local --judge-model PATH: a local causal LM; --workers 1 is then sensible)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moir.data.manifest import read_manifest
from moir.metrics import mmbench_video_mean_scores
from moir.evaluate.judge import JudgeCache, LocalJudge, OpenAIJudge, judge_prompt, parse_judge_score
from moir.storage import write_json_atomic, write_table_atomic

log = logging.getLogger(__name__)

FAILED_SCORE = -1
SCORES_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("judge_reply", pa.string()),
    pa.field("judge_score", pa.int64(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
])


class JudgingError(RuntimeError):
    """Too many judge calls failed, or the predictions cannot be matched to the manifest."""


@dataclass(frozen=True)
class JudgeItem:
    id: str
    question: str
    answer: str
    prediction: str


def backoff_delays(max_retries: int, backoff_s: float, max_backoff_s: float) -> list[float]:
    """The waits before retry 1..max_retries: backoff_s * 2**(i-1), capped at max_backoff_s."""
    return [min(backoff_s * 2 ** i, max_backoff_s) for i in range(max_retries)]


def judge_concurrently(
    judge: Callable[[str], str],
    judge_name: str,
    cache: JudgeCache,
    items: Sequence[JudgeItem],
    *,
    workers: int = 8,
    max_retries: int = 4,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    max_failed_share: float = 0.02,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict]:
    """{id, judge_reply, judge_score, status, error} per item, in order (module docstring for the rules)."""
    if workers < 1 or max_retries < 0 or not 0.0 <= max_failed_share <= 1.0:
        raise ValueError("workers >= 1, max_retries >= 0 and 0 <= max_failed_share <= 1 are required")
    delays = backoff_delays(max_retries, backoff_s, max_backoff_s)
    cache_lock = threading.Lock()

    def score(item: JudgeItem) -> dict:
        key = cache.key(judge_name, item.question, item.answer, item.prediction)
        with cache_lock:
            reply = cache.get(key)
        error = None
        if reply is None:
            for attempt in range(max_retries + 1):
                if attempt:
                    sleep(delays[attempt - 1])
                try:
                    reply = judge(judge_prompt(item.question, item.answer, item.prediction))
                    break
                except Exception as exc:  # noqa: BLE001 (any failure of a call is retried, then recorded)
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning("judge %s: %s attempt %d failed: %s", judge_name, item.id, attempt + 1, error)
            if reply is None:
                return {"id": item.id, "judge_reply": None, "judge_score": FAILED_SCORE, "status": "call_failed",
                        "error": error}
            with cache_lock:
                cache.put(key, judge_name, reply)
        value = parse_judge_score(reply)  # FAILED_SCORE (-1) when the reply is no integer
        return {"id": item.id, "judge_reply": reply, "judge_score": value,
                "status": "ok" if value >= 0 else "unparsed", "error": None}

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
        results = list(pool.map(score, items))
    failed = sum(result["status"] == "call_failed" for result in results)
    if items and failed / len(items) > max_failed_share:
        raise JudgingError(f"judge {judge_name}: {failed} of {len(items)} calls failed after {max_retries} retries "
                           f"({failed / len(items):.1%}), more than the allowed share {max_failed_share:.1%}")
    return results


def open_ended_items(predictions_path: str | os.PathLike, manifest_path: str | os.PathLike) -> list[JudgeItem]:
    """The open-ended predictions of an evaluation (predictions.parquet: id, protocol, prediction) with their
    question and first reference answer from the manifest."""
    table = pq.read_table(predictions_path)
    for column in ("id", "protocol", "prediction"):
        if column not in table.column_names:
            raise JudgingError(f"{predictions_path}: missing column {column!r}")
    rows = {row["id"]: row for row in read_manifest(manifest_path).select(["id", "question", "answers"]).to_pylist()}
    items = []
    for record in table.select(["id", "protocol", "prediction"]).to_pylist():
        if record["protocol"] != "open_ended":
            continue
        row = rows.get(record["id"])
        if row is None:
            raise JudgingError(f"{predictions_path}: example {record['id']!r} is not in {manifest_path}")
        if not row["answers"]:
            raise JudgingError(f"{manifest_path}: example {record['id']!r} has no reference answer (field 'answers')")
        items.append(JudgeItem(record["id"], row["question"], row["answers"][0], record["prediction"]))
    return items


def judge_predictions_file(
    predictions_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    out_path: str | os.PathLike,
    judge,
    cache_path: str | os.PathLike,
    **options,
) -> dict:
    """Judge an evaluation's open-ended predictions into `out_path` (atomic); returns a summary
    {judge, n, n_ok, n_unparsed, n_call_failed, mean_score (failed: 0), mean_valid_score}. `options`: those of
    `judge_concurrently`."""
    items = open_ended_items(predictions_path, manifest_path)
    results = judge_concurrently(judge, judge.name, JudgeCache(cache_path), items, **options)
    table = pa.Table.from_pylist(results, schema=SCORES_SCHEMA.with_metadata({b"moir.judge": judge.name.encode()}))
    write_table_atomic(table, Path(out_path))
    means = mmbench_video_mean_scores([r["judge_score"] for r in results])  # VLMEvalKit's all / valid
    counts = {status: sum(r["status"] == status for r in results) for status in ("ok", "unparsed", "call_failed")}
    return {
        "judge": judge.name, "n": len(results), "n_ok": counts["ok"], "n_unparsed": counts["unparsed"],
        "n_call_failed": counts["call_failed"],
        "mean_score": means["all"] if results else None,
        "mean_valid_score": means["valid"] if counts["ok"] else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moir.evaluate.judging", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", required=True, help="predictions.parquet of moir.evaluate")
    parser.add_argument("--manifest", required=True, help="the evaluated split's manifest (questions, answers)")
    parser.add_argument("--out", required=True, help="judge scores Parquet to write")
    parser.add_argument("--summary", required=True, help="summary JSON to write")
    parser.add_argument("--cache", required=True, help="judge reply cache (JSON lines, shared across runs)")
    parser.add_argument("--judge", choices=("openai", "local"), required=True)
    parser.add_argument("--judge-url", help="base URL of an OpenAI-compatible endpoint (.../v1)")
    parser.add_argument("--judge-model", required=True, help="the endpoint's model name, or a local model path")
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--workers", type=int, default=8, help="requests in flight at most")
    parser.add_argument("--max-retries", type=int, default=4)
    parser.add_argument("--backoff-s", type=float, default=1.0)
    parser.add_argument("--max-backoff-s", type=float, default=60.0)
    parser.add_argument("--max-failed-share", type=float, default=0.02)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.judge == "openai":
        if not args.judge_url:
            parser.error("--judge openai needs --judge-url")
        judge = OpenAIJudge(args.judge_url, args.judge_model, api_key=os.environ.get(args.judge_api_key_env),
                            max_retries=0)
    else:
        judge = LocalJudge(args.judge_model)
    summary = judge_predictions_file(
        args.predictions, args.manifest, args.out, judge, args.cache, workers=args.workers,
        max_retries=args.max_retries, backoff_s=args.backoff_s, max_backoff_s=args.max_backoff_s,
        max_failed_share=args.max_failed_share,
    )
    write_json_atomic(summary, args.summary)
    log.info("judged %d predictions: %s", summary["n"], summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
