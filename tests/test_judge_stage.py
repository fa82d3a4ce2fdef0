"""The judge as its own stage (rule `judge`): a deferred evaluation's open-ended answers are left unscored by the GPU
job, then judged by moir.evaluate.judge_stage against an OpenAI-compatible server on loopback, and merged into the
final predictions.parquet and metrics.json: the scores, correctness and accuracy are those the in-job judge gives."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moir.data.manifest import write_manifest
from moir.evaluate import judge_stage
from moir.evaluate.evaluation import summary
from moir.evaluate.judge import JudgeCache, OpenAIJudge
from moir.evaluate.scoring import accuracy_metrics, score_predictions
from moir.evaluate.store import ANALYSIS_FIELDS, PREDICTIONS_SCHEMA


class _Judge(BaseHTTPRequestHandler):
    """3 when the candidate equals the ground truth, else 1; HTTP 503 for "DOWN"."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fields = dict(line.split(": ", 1) for line in body["messages"][1]["content"].splitlines() if ": " in line)
        self.server.calls += 1
        if fields["Candidate answer"] == "DOWN":
            self.send_response(503)
            self.end_headers()
            return
        content = "3" if fields["Candidate answer"] == fields["Groundtruth answer"] else "1"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    httpd.calls = 0
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1"


ANSWERS = ["a dog runs", "wrong", "a cat sleeps", "DOWN"]


def manifest_rows() -> list[dict]:
    rows = [{"id": f"v/{i}", "dataset": "mmbench_video", "split": "test", "question": f"What happens in {i}?",
             "choices": [], "answer_index": None, "answers": [truth], "answer_type": None, "hint": "",
             "media_kind": "video", "media_path": f"{i}.mp4", "has_image": True, "category": "Object Recognition"}
            for i, truth in enumerate(["a dog runs", "a bird sings", "a cat sleeps", "rain"])]
    rows.append({"id": "v/mc", "dataset": "mmbench_video", "split": "test", "question": "Which?",
                 "choices": ["red", "blue"], "answer_index": 1, "answers": [], "answer_type": None, "hint": "",
                 "media_kind": "video", "media_path": "mc.mp4", "has_image": True, "category": "colour"})
    return rows


def write_deferred_evaluation(tmp_path, predictions: list[str]):
    """What the GPU job writes with --judge defer: the open-ended rows unscored, a metrics.json."""
    rows = manifest_rows()
    manifest = write_manifest(rows, tmp_path / "test.parquet", media_root=tmp_path)
    scored = score_predictions(rows, predictions, None, None)
    predict_dir = tmp_path / "eval" / "clean" / "predict"
    predict_dir.mkdir(parents=True)
    table = [{"id": row["id"], "prediction": text, **dict.fromkeys(ANALYSIS_FIELDS), **item}
             for row, text, item in zip(rows, predictions, scored)]
    pq.write_table(pa.Table.from_pylist(table, schema=PREDICTIONS_SCHEMA), predict_dir / "predictions.parquet")
    metrics = {"mode": "clean", "evaluation": "predict", "accuracy": accuracy_metrics(rows, scored, None),
               "judge": {"deferred": True}, "dominance": None, "effective_rank": None, "robustness": None}
    metrics["summary"] = summary(metrics)
    (predict_dir / "metrics.json").write_text(json.dumps(metrics))
    return rows, manifest, predict_dir


def run_stage(server, tmp_path, predict_dir, manifest, **settings) -> int:
    options = {"judge": "openai", "judge_url": url(server), "judge_model": "judge-model", "workers": 2,
               "max_retries": 1, "backoff_s": 0.0, "max_backoff_s": 0.0, "max_failed_share": 0.5, **settings}
    return judge_stage.main(["--predict-dir", str(predict_dir), "--manifest", str(manifest),
                             "--out-dir", str(predict_dir.parent), "--cache", str(tmp_path / "cache.jsonl"),
                             "--settings", json.dumps(options)])


def test_deferred_answers_are_left_unscored_by_the_gpu_job(tmp_path):
    rows, _, predict_dir = write_deferred_evaluation(tmp_path, ANSWERS + ["B"])
    table = pq.read_table(predict_dir / "predictions.parquet").to_pylist()
    assert [r["score"] for r in table] == [None] * 4 + [1.0]  # the multiple-choice answer is scored on the GPU node
    assert [r["judge_reply"] for r in table] == [None] * 5


def test_the_judge_stage_merges_the_scores_as_the_in_job_judge_would(server, tmp_path):
    answers = ["a dog runs", "wrong", "a cat sleeps", "rain", "B"]
    rows, manifest, predict_dir = write_deferred_evaluation(tmp_path, answers)
    assert run_stage(server, tmp_path, predict_dir, manifest) == 0
    out = predict_dir.parent
    merged = pq.read_table(out / "predictions.parquet").to_pylist()
    assert [r["score"] for r in merged] == [3.0, 1.0, 3.0, 3.0, 1.0]
    assert [r["correct"] for r in merged] == [True, False, True, True, True]
    metrics = json.loads((out / "metrics.json").read_text())
    judge = OpenAIJudge(url(server), "judge-model", max_retries=0)
    in_job = score_predictions(rows, answers, judge, JudgeCache(tmp_path / "in_job.jsonl"))
    assert [r["score"] for r in merged] == [item["score"] for item in in_job]
    assert metrics["accuracy"] == accuracy_metrics(rows, in_job, judge.name)
    assert metrics["evaluation"] == "clean" and metrics["summary"]["acc"] == metrics["accuracy"]["value"]
    assert metrics["judge"]["calls"]["workers"] == 2 and metrics["judge"]["name"] == judge.name


def test_a_call_that_keeps_failing_scores_minus_one_and_counts_zero(server, tmp_path):
    _, manifest, predict_dir = write_deferred_evaluation(tmp_path, ANSWERS + ["B"])
    assert run_stage(server, tmp_path, predict_dir, manifest) == 0
    out = predict_dir.parent
    merged = pq.read_table(out / "predictions.parquet").to_pylist()
    assert [r["score"] for r in merged] == [3.0, 1.0, 3.0, -1.0, 1.0]  # DOWN: 2 attempts failed: -1, as VLMEvalKit
    statuses = pq.read_table(out / "judge_scores.parquet").column("status").to_pylist()
    assert statuses == ["ok", "ok", "ok", "call_failed"]
    accuracy = json.loads((out / "metrics.json").read_text())["accuracy"]
    assert accuracy["by_protocol"]["open_ended"]["n_failed"] == 1
    assert accuracy["by_protocol"]["open_ended"]["mean_score"] == pytest.approx((3 + 1 + 3 + 0) / 4)


def test_too_many_failed_calls_fail_the_stage_and_write_nothing(server, tmp_path):
    _, manifest, predict_dir = write_deferred_evaluation(tmp_path, ["DOWN"] * 4 + ["B"])
    with pytest.raises(Exception, match="calls failed"):
        run_stage(server, tmp_path, predict_dir, manifest, max_failed_share=0.2)
    assert not (predict_dir.parent / "metrics.json").exists()
    assert not (predict_dir.parent / "predictions.parquet").exists()
