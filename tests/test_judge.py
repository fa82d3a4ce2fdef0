"""The MMBench-Video judge against a real OpenAI-compatible HTTP server on loopback, a local tiny causal LM as
judge, and the reply cache."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from moir.evaluate.judge import (
    JUDGE_SYSTEM_PROMPT,
    JudgeCache,
    JudgeError,
    LocalJudge,
    OpenAIJudge,
    judge_predictions,
    judge_prompt,
    parse_judge_score,
)
from moir.models.tiny import QWEN_CHAT_TEMPLATE, qwen_tokenizer


class _ChatCompletions(BaseHTTPRequestHandler):
    """Scores 3 when the candidate equals the groundtruth, 1 otherwise; "unsure" for the candidate "???"."""

    def do_POST(self):  # noqa: N802 (the http.server API)
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if server.fail_first > 0:
            server.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        user = body["messages"][1]["content"]
        fields = dict(line.split(": ", 1) for line in user.splitlines() if ": " in line)
        if fields["Candidate answer"] == "???":
            content = "unsure"
        else:
            content = "3" if fields["Candidate answer"] == fields["Groundtruth answer"] else "1"
        reply = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ChatCompletions)
    httpd.requests = []
    httpd.fail_first = 0
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _base_url(httpd):
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def test_parse_judge_score():
    assert [parse_judge_score(reply) for reply in ("0", " 3\n", "2", "4", "2.", "Score: 2", "", "-1")] == [
        0, 3, 2, 4, -1, -1, -1, -1
    ]  # VLMEvalKit's parsing; tests/test_official_protocols.py checks it against VLMEvalKit itself


def test_openai_judge_scores_and_caches(server, tmp_path):
    judge = OpenAIJudge(_base_url(server), "judge-model", api_key="secret")
    cache = JudgeCache(tmp_path / "judge_cache.jsonl")
    questions = ["What plugin is shown?", "What sport?", "What sport?"]
    answers = ["PayPal Honey", "soccer", "soccer"]
    predictions = ["PayPal Honey", "tennis", "???"]
    results = judge_predictions(judge, cache, questions, answers, predictions)
    assert results == [("3", 3), ("1", 1), ("unsure", -1)]

    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer secret"
    assert request["body"]["model"] == "judge-model"
    assert request["body"]["temperature"] == 0
    assert request["body"]["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    assert request["body"]["messages"][1]["content"] == judge_prompt(questions[0], answers[0], predictions[0])

    # a second pass, and a new cache object reading the same file, ask nothing
    assert judge_predictions(judge, cache, questions, answers, predictions) == results
    reloaded = JudgeCache(tmp_path / "judge_cache.jsonl")
    assert judge_predictions(judge, reloaded, questions, answers, predictions) == results
    assert len(server.requests) == 3

    # another judge model is another cache key
    other = OpenAIJudge(_base_url(server), "other-model")
    judge_predictions(other, reloaded, questions[:1], answers[:1], predictions[:1])
    assert len(server.requests) == 4


def test_cache_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    key = JudgeCache.key("j", "q", "a", "p")
    path.write_text(json.dumps({"key": key, "judge": "j", "reply": "2"}) + "\n" + '{"key": "abc", "rep')
    assert JudgeCache(path).get(key) == "2"


def test_openai_judge_retries_server_errors(server):
    server.fail_first = 2
    judge = OpenAIJudge(_base_url(server), "m", max_retries=2, retry_wait_s=0)
    assert judge(judge_prompt("q", "a", "a")) == "3"
    assert len(server.requests) == 3


def test_openai_judge_unreachable_is_a_clear_error(server):
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, retry_wait_s=0, timeout_s=2)
    with pytest.raises(JudgeError, match=f"cannot reach the judge at http://127.0.0.1:{port}/v1/chat/completions"):
        judge(judge_prompt("q", "a", "b"))


def test_openai_judge_client_error_is_not_retried(server):
    judge = OpenAIJudge(f"http://127.0.0.1:{server.server_address[1]}/wrong", "m", max_retries=3)
    with pytest.raises(JudgeError, match="HTTP 404"):
        judge(judge_prompt("q", "a", "b"))
    assert len(server.requests) == 1


def test_local_judge_is_greedy_and_cached(tmp_path):
    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")

    judge = LocalJudge(str(tmp_path / "judge"), max_new_tokens=4)
    assert judge.name == f"local:{tmp_path / 'judge'}"
    prompt = judge_prompt("What sport?", "soccer", "tennis")
    reply = judge(prompt)
    assert isinstance(reply, str) and judge(prompt) == reply  # greedy: the same reply every time
    cache = JudgeCache(tmp_path / "cache.jsonl")
    results = judge_predictions(judge, cache, ["What sport?"] * 2, ["soccer"] * 2, ["tennis"] * 2)
    assert results == [(reply, parse_judge_score(reply))] * 2
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 1  # asked once, then from the cache

    with pytest.raises(JudgeError, match="cannot load the local judge model"):
        LocalJudge(str(tmp_path / "missing"))
