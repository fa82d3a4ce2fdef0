"""The MMBench-Video judge: an LLM scores a free-form prediction 0-3 against the reference answer.

The prompt is the benchmark's own (VLMEvalKit's MMBench-Video evaluation): a system prompt that defines the 0-3
scale by semantic similarity and a user turn "Question: ...\\nGroundtruth answer: ...\\nCandidate answer: ...\\nYour
response: ". As in VLMEvalKit, a reply counts when it is an integer, of any value (`parse_judge_score`); anything else
is a failed judgement (-1), scored 0 in the "all" mean and left out of the "valid" mean.

Two judges, chosen by the caller:
- `OpenAIJudge`: any OpenAI-compatible chat-completions endpoint (a vLLM server on the cluster, a hosted API),
  spoken to over `urllib` (no client library), greedy (temperature 0). The base URL (".../v1") and the model name
  come from the arguments; an API key from an environment variable when the endpoint needs one.
- `LocalJudge`: a local Hugging Face causal LM (a path or hub id), greedy decoding with its chat template.

`JudgeCache` keeps every reply in a JSON-lines file keyed by (judge, question, reference answer, prediction), so
reruns and resumed evaluations never ask twice. Each reply is appended and flushed as it arrives; a torn last
line (a killed process) is ignored on reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

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


class JudgeError(RuntimeError):
    """The judge cannot be reached or answers with an error; the message names the endpoint or model."""


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
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_wait_s = retry_wait_s
        self.max_tokens = max_tokens
        self.name = f"openai:{model}@{base_url.rstrip('/')}"

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read().decode())

    def check_reachable(self) -> None:
        """Fail early, before hours of generation, when nothing answers at the endpoint (GET .../models).

        Any HTTP answer counts as reachable (some servers do not list models); a refused connection, an unknown
        host or a timeout raise JudgeError."""
        models_url = self.url.removesuffix("/chat/completions") + "/models"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(models_url, headers=headers),
                                        timeout=min(self.timeout_s, 30.0)):
                pass
        except urllib.error.HTTPError as error:
            log.info("judge %s: GET %s answered HTTP %d; treating the endpoint as reachable", self.name,
                     models_url, error.code)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise JudgeError(f"cannot reach the judge at {models_url}: {error}") from error

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
                body = self._post(payload)
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:500]
                if error.code < 500 and error.code != 429:  # a request the server will never accept
                    raise JudgeError(
                        f"judge at {self.url} rejected the request: HTTP {error.code}: {detail}"
                    ) from error
                last_error = JudgeError(f"HTTP {error.code}: {detail}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last_error = error
            except json.JSONDecodeError as error:
                raise JudgeError(f"judge at {self.url} answered with invalid JSON: {error}") from error
            else:
                try:
                    return body["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError) as error:
                    raise JudgeError(f"judge at {self.url}: reply has no choices[0].message.content: {body}") from error
            log.warning("judge %s: attempt %d failed: %s", self.url, attempt + 1, last_error)
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
    for question, answer, prediction in tqdm(items, total=len(questions), desc=f"judge {judge.name}"):
        key = cache.key(judge.name, question, answer, prediction)
        reply = cache.get(key)
        if reply is None:
            reply = judge(judge_prompt(question, answer, prediction))
            cache.put(key, judge.name, reply)
        results.append((reply, parse_judge_score(reply)))
    return results
