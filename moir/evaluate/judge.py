"""The MMBench-Video judge: an LLM scores a free-form prediction 0-3 against the reference answer.

The prompt is the benchmark's own (VLMEvalKit's MMBench-Video evaluation): a system prompt that defines the 0-3
scale by semantic similarity and a user turn "Question: ...\\nGroundtruth answer: ...\\nCandidate answer: ...\\nYour
response: ". As in VLMEvalKit, a reply counts when it is an integer, of any value (`parse_judge_score`); anything else
is a failed judgement (-1), scored 0 in the "all" mean and left out of the "valid" mean.

Two judges, chosen by the caller:
- `OpenAIJudge`: any OpenAI-compatible chat-completions endpoint (a vLLM server on the cluster, a hosted API),
  spoken to over `urllib` (no client library), greedy (temperature 0). The base URL (".../v1") and the model name
  come from the arguments; an API key from an environment variable when the endpoint needs one.
  The HTTP client never follows a redirect (the API key would go with it, to wherever the `Location` points): a
  3xx reply is an error naming the judge, and counts as "reachable" in the reachability check without being
  followed. A reply is read up to `max_reply_bytes` (default 1 MiB) and refused beyond, and `timeout_s` bounds a
  whole request (connection, headers and body), not each read: a server trickling one byte a second cannot keep
  a call alive past it. Error messages quote at most a few hundred characters of a reply.
- `LocalJudge`: a local Hugging Face causal LM (a path or hub id), greedy decoding with its chat template.

`JudgeCache` keeps every reply in a JSON-lines file keyed by (judge, question, reference answer, prediction), so
reruns and resumed evaluations never ask twice. Each reply is appended and flushed as it arrives; a torn last
line (a killed process) is ignored on reading.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from moir import runtime

log = logging.getLogger(__name__)

JUDGE_SYSTEM_PROMPT = (
    "As an AI assistant, your task is to evaluate a candidate answer in comparison to a given correct answer.\n"
    "The question itself, the correct 'groundtruth' answer, and the candidate answer will be provided to you.\n"
    "Your assessment should range from 0 to 3, based solely on the semantic similarity between the groundtruth "
    "and the candidate answer, disregarding any grammatical differences.\n"
    "A rating of 0 suggests no similarity, implying the candidate answer is entirely incorrect.\n"
    "A rating of 1 suggests low similarity, meaning the candidate answer is largely incorrect.\n"
    "A rating of 2 suggests high similarity, meaning the candidate answer is largely correct.\n"
    "Lastly, a rating of 3 indicates complete similarity, which means the candidate answer is entirely correct.\n"
    "Your response should be a single integer from 0, 1, 2, or 3."
)
MAX_SCORE = 3
MAX_REPLY_BYTES = 1 << 20
QUOTED_REPLY_CHARS = 300  # how much of a reply an error message quotes


class JudgeError(RuntimeError):
    """The judge cannot be reached or answers with an error; the message names the endpoint or model."""


class ReplyTooLarge(JudgeError):
    """The judge's reply is longer than `max_reply_bytes`."""


def judge_prompt(question: str, answer: str, prediction: str) -> str:
    """The user turn of the benchmark's judge prompt."""
    return f"Question: {question}\nGroundtruth answer: {answer}\nCandidate answer: {prediction}\nYour response: "


# VLMEvalKit scores a reply with `int(x) if istype(x, int) else -1`, where istype evaluates the reply as Python:
# a reply counts when it is a Python int literal (ASCII decimal, no leading zeros but "0", "00", ..., underscores
# between digits) with an optional sign, surrounded only by whitespace Python's tokenizer accepts there: before it,
# spaces and tabs (eval strips them) and whole lines ending in a line break or form feed (the number's line must
# not be indented); after it, spaces, tabs and form feeds, or anything ending in a line break or form feed (an
# indented last line is a syntax error).
_JUDGE_SCORE = re.compile(
    r"[ \t]*(?:[ \t\n\r\f]*[\n\r\f])?([+-]?(?:0+(?:_?0)*|[1-9](?:_?[0-9])*))(?:[ \t\f]*|[ \t\n\r\f]*[\n\r\f])",
    re.ASCII,
)
FAILED_SCORE = -1


def parse_judge_score(reply: str) -> int:
    """The score in a judge reply, exactly as VLMEvalKit's MMBench-Video evaluation parses it: any integer
    ("+2" is 2, "7" is 7, "-2" is -2; "01", "2.", "Score: 2" are not integers), FAILED_SCORE (-1) for a reply
    that is not one. A negative score is a failed judgement: 0 in the "all" mean, left out of the "valid" one.

    Agrees with VLMEvalKit on every reply it does not crash on (it crashes on replies such as "True", "(2)" or
    "- 2", which Python evaluates to an int but int() rejects); tested against it in
    tests/test_official_protocols.py."""
    match = _JUDGE_SCORE.fullmatch(reply)
    if match is None:
        return FAILED_SCORE
    try:
        return int(match.group(1))
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits); Python's eval refuses too
        return FAILED_SCORE


def _quote(data: bytes | str) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return text if len(text) <= QUOTED_REPLY_CHARS else f"{text[:QUOTED_REPLY_CHARS]}... ({len(text)} characters)"


def http_request(method: str, url: str, *, headers: dict[str, str], body: bytes | None = None, timeout_s: float,
                 max_reply_bytes: int) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request, redirects never followed, the reply capped at
    `max_reply_bytes` (JudgeError beyond), and the whole exchange bounded by `timeout_s` (TimeoutError): a watchdog
    shuts the socket down at the deadline, whatever the server trickles."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JudgeError(f"judge URL {url!r} is not an http(s) URL")
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout_s)
    expired = threading.Event()
    sockets = []  # the connection's socket (http.client drops its own reference once a reply will close it)

    def abort() -> None:
        expired.set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    watchdog = threading.Timer(timeout_s, abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.connect()
        sockets.append(connection.sock)
        if expired.is_set():
            abort()
        target = parts.path or "/"
        connection.request(method, target + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        response = connection.getresponse()
        announced = response.getheader("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > max_reply_bytes:
            raise ReplyTooLarge(
                f"judge at {url}: reply of {announced} bytes, more than max_reply_bytes {max_reply_bytes}"
            )
        chunks, received = [], 0
        while chunk := response.read(min(1 << 16, max_reply_bytes + 1 - received)):
            chunks.append(chunk)
            received += len(chunk)
            if received > max_reply_bytes:
                raise ReplyTooLarge(
                    f"judge at {url}: reply longer than max_reply_bytes {max_reply_bytes}; not read further"
                )
        if expired.is_set():
            raise TimeoutError
        return response.status, {k.lower(): v for k, v in response.getheaders()}, b"".join(chunks)
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError(f"{method} {url}: no complete reply within {timeout_s:g} s") from None
        raise
    finally:
        watchdog.cancel()
        connection.close()


class OpenAIJudge:
    """A judge behind an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        retry_wait_s: float = 2.0,
        max_tokens: int = 8,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_wait_s = retry_wait_s
        self.max_tokens = max_tokens
        self.max_reply_bytes = max_reply_bytes
        self.name = f"openai:{model}@{base_url.rstrip('/')}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _post(self, payload: dict) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", **self._headers()}
        status, _, body = http_request("POST", self.url, headers=headers, body=json.dumps(payload).encode(),
                                       timeout_s=self.timeout_s, max_reply_bytes=self.max_reply_bytes)
        return status, body

    def check_reachable(self) -> None:
        """Fail early, before hours of generation, when nothing answers at the endpoint (GET .../models).

        Any HTTP answer counts as reachable (some servers do not list models; a redirect is not followed); a
        refused connection, an unknown host or a timeout raise JudgeError."""
        models_url = self.url.removesuffix("/chat/completions") + "/models"
        try:
            status, headers, _ = http_request("GET", models_url, headers=self._headers(),
                                              timeout_s=min(self.timeout_s, 30.0), max_reply_bytes=self.max_reply_bytes)
        except ReplyTooLarge as error:  # an over-long model list: something answers
            log.info("%s; treating the endpoint as reachable", error)
            return
        except (OSError, http.client.HTTPException) as error:
            raise JudgeError(f"cannot reach the judge at {models_url}: {error}") from error
        if status >= 300:
            moved = f" (redirect to {headers.get('location')!r}, not followed)" if 300 <= status < 400 else ""
            log.info("judge %s: GET %s answered HTTP %d%s; treating the endpoint as reachable", self.name,
                     models_url, status, moved)

    def __call__(self, user_prompt: str) -> str:
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": user_prompt},
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.retry_wait_s * 2 ** (attempt - 1), 60.0))
            try:
                status, data = self._post(payload)
            except (OSError, http.client.HTTPException) as error:  # refused, reset, TimeoutError
                last_error = error
                log.warning("judge %s: attempt %d failed: %s", self.url, attempt + 1, last_error)
                continue
            if 300 <= status < 400:
                raise JudgeError(f"judge at {self.url} answered HTTP {status} (a redirect); redirects are not "
                                 "followed, so the API key never leaves for another address: use the final URL")
            if status >= 400:
                if status < 500 and status != 429:  # a request the server will never accept
                    raise JudgeError(f"judge at {self.url} rejected the request: HTTP {status}: {_quote(data)}")
                last_error = JudgeError(f"HTTP {status}: {_quote(data)}")
                log.warning("judge %s: attempt %d failed: %s", self.url, attempt + 1, last_error)
                continue
            try:
                body = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise JudgeError(f"judge at {self.url} answered with invalid JSON ({error}): {_quote(data)}") from error
            try:
                return body["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError) as error:
                raise JudgeError(
                    f"judge at {self.url}: reply has no choices[0].message.content: {_quote(json.dumps(body))}"
                ) from error
        raise JudgeError(f"cannot reach the judge at {self.url} after {self.max_retries + 1} attempts: {last_error}")


class LocalJudge:
    """A judge run locally: a Hugging Face causal LM with a chat template, greedy decoding."""

    def __init__(self, model_path: str, *, device: str = "cpu", max_new_tokens: int = 8) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = AutoModelForCausalLM.from_pretrained(model_path).to(device).eval()
        except OSError as error:
            raise JudgeError(f"cannot load the local judge model {model_path!r}: {error}") from error
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.name = f"local:{model_path}"

    def __call__(self, user_prompt: str) -> str:
        import torch

        messages = [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user_prompt}]
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        with torch.no_grad():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


class JudgeCache:
    """Judge replies on disk, one JSON object per line: {"key", "judge", "reply"}."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    try:
                        record = json.loads(line)
                        self.replies[record["key"]] = record["reply"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning("%s: line %d is not a cache record; ignored", self.path, number)

    @staticmethod
    def key(judge_name: str, question: str, answer: str, prediction: str) -> str:
        text = json.dumps([judge_name, question, answer, prediction], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, key: str, judge_name: str, reply: str) -> None:
        self.replies[key] = reply
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "judge": judge_name, "reply": reply}, ensure_ascii=False) + "\n")
            handle.flush()


def judge_predictions(
    judge: OpenAIJudge | LocalJudge,
    cache: JudgeCache,
    questions: Sequence[str],
    answers: Sequence[str],
    predictions: Sequence[str],
) -> list[tuple[str, int | None]]:
    """(reply, score) for each prediction, asking the judge only for what the cache does not hold."""
    if not len(questions) == len(answers) == len(predictions):
        raise ValueError("questions, answers and predictions must have the same length")
    results = []
    items = zip(questions, answers, predictions)
    for question, answer, prediction in runtime.progress(items, total=len(questions), desc=f"judge {judge.name}"):
        key = cache.key(judge.name, question, answer, prediction)
        reply = cache.get(key)
        if reply is None:
            reply = judge(judge_prompt(question, answer, prediction))
            cache.put(key, judge.name, reply)
        results.append((reply, parse_judge_score(reply)))
    return results
