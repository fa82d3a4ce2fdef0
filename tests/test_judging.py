"""The judge stage against an OpenAI-compatible HTTP server on loopback: bounded concurrency, retry with backoff,
the reply cache, -1 for failed calls and unparsed replies, the failure-share limit, and the atomic scores file."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moir.data.manifest import write_manifest
from moir.evaluate.judge import OpenAIJudge
from moir.evaluate.judging import JudgingError, backoff_delays, judge_predictions_file

WORKERS = 3


class _Judge(BaseHTTPRequestHandler):
    """3 when candidate == groundtruth, else 1; "unsure" for "???"; HTTP 503 always for "DOWN" and for the first
    two calls of "FLAKY". The first WORKERS requests wait until WORKERS are in flight together."""

    def do_POST(self):  # noqa: N802
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fields = dict(line.split(": ", 1) for line in body["messages"][1]["content"].splitlines() if ": " in line)
        candidate = fields["Candidate answer"]
        with server.condition:
            server.calls.append(candidate)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            if len(server.calls) <= WORKERS:
                server.condition.notify_all()
                server.condition.wait_for(lambda: server.max_in_flight >= WORKERS, timeout=10)
        try:
            if candidate == "DOWN" or (candidate == "FLAKY" and server.calls.count("FLAKY") <= 2):
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b"busy")
                return
            content = "unsure" if candidate == "???" else ("3" if candidate == fields["Groundtruth answer"] else "1")
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply)
        finally:
            with server.condition:
                server.in_flight -= 1

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    httpd.condition = threading.Condition()
    httpd.calls, httpd.in_flight, httpd.max_in_flight = [], 0, 0
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def write_inputs(tmp_path, predictions: list[str]):
    rows = [{"id": f"v/{i}", "dataset": "mmbench_video", "split": "test", "question": f"What happens in {i}?",
             "choices": [], "answer_index": None, "answers": [f"thing {i}"], "answer_type": None, "hint": "",
             "media_kind": "video", "media_path": f"{i}.mp4", "has_image": True, "category": ""}
            for i in range(len(predictions))]
    manifest = write_manifest(rows, tmp_path / "test.parquet", media_root=tmp_path)
    table = pa.Table.from_pylist([{"id": f"v/{i}", "protocol": "open_ended", "prediction": text}
                                  for i, text in enumerate(predictions)]
                                 + [{"id": "other/0", "protocol": "multiple_choice", "prediction": "A"}])
    pq.write_table(table, tmp_path / "predictions.parquet")
    return tmp_path / "predictions.parquet", manifest


def judge_for(httpd):
    return OpenAIJudge(f"http://127.0.0.1:{httpd.server_address[1]}/v1", "judge-model", max_retries=0)


def test_concurrent_scores_and_cache(server, tmp_path):
    predictions = [f"thing {i}" if i % 2 == 0 else "wrong" for i in range(10)] + ["???"]
    pred_path, manifest = write_inputs(tmp_path, predictions)
    out = tmp_path / "judge_scores.parquet"
    summary = judge_predictions_file(pred_path, manifest, out, judge_for(server), tmp_path / "cache.jsonl",
                                     workers=WORKERS, sleep=lambda s: None)
    assert server.max_in_flight == WORKERS  # bounded, and really concurrent
    table = pq.read_table(out)
    assert table.schema.metadata[b"moir.judge"].decode() == judge_for(server).name
    scores = table.column("judge_score").to_pylist()
    assert table.column("id").to_pylist() == [f"v/{i}" for i in range(11)]  # the multiple-choice row is not judged
    assert scores == [3, 1] * 5 + [-1]
    assert table.column("status").to_pylist()[-1] == "unparsed"
    assert summary["n"] == 11 and summary["n_unparsed"] == 1 and summary["mean_valid_score"] == 2.0
    n_calls = len(server.calls)
    judge_predictions_file(pred_path, manifest, out, judge_for(server), tmp_path / "cache.jsonl", workers=WORKERS)
    assert len(server.calls) == n_calls  # every reply came from the cache


def test_retry_with_backoff_then_success(server, tmp_path):
    pred_path, manifest = write_inputs(tmp_path, ["thing 0", "FLAKY", "thing 2"])
    waits = []
    judge_predictions_file(pred_path, manifest, tmp_path / "s.parquet", judge_for(server), tmp_path / "c.jsonl",
                           workers=WORKERS, max_retries=4, backoff_s=0.5, sleep=waits.append)
    assert waits == [0.5, 1.0]  # two 503s, then an answer
    assert pq.read_table(tmp_path / "s.parquet").column("status").to_pylist() == ["ok"] * 3
    assert backoff_delays(5, 1.0, 3.0) == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_failed_calls_score_minus_one_until_the_share_is_exceeded(server, tmp_path):
    pred_path, manifest = write_inputs(tmp_path, ["thing 0", "DOWN", "thing 2", "thing 3"])
    out = tmp_path / "s.parquet"
    summary = judge_predictions_file(pred_path, manifest, out, judge_for(server), tmp_path / "c.jsonl",
                                     workers=WORKERS, max_retries=2, sleep=lambda s: None, max_failed_share=0.25)
    table = pq.read_table(out).to_pylist()
    assert table[1]["judge_score"] == -1 and table[1]["status"] == "call_failed" and "503" in table[1]["error"]
    assert server.calls.count("DOWN") == 3 and summary["n_call_failed"] == 1
    out.unlink()
    with pytest.raises(JudgingError, match=r"1 of 4 calls failed .*\(25.0%\), more than the allowed share 10.0%"):
        judge_predictions_file(pred_path, manifest, out, judge_for(server), tmp_path / "c.jsonl",
                               workers=WORKERS, max_retries=0, sleep=lambda s: None, max_failed_share=0.10)
    assert not out.exists()  # nothing half-written
