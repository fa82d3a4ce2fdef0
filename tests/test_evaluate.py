"""`python -m moir.evaluate` on the tiny LLaVA and a synthetic split: the three modes, rank deltas, robustness,
resuming, the judge path and the errors; plus the scoring helpers on hand-made rows."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import torch

import moir.models.base
from moir.data.manifest import read_manifest, write_manifest
from moir.evaluate import EvaluationError
from moir.evaluate.evaluation import main
from moir.evaluate.judge import JudgeCache, JudgeError
from moir.evaluate.noise import noise_like
from moir.evaluate.scoring import accuracy_metrics, robustness_metrics, score_predictions
from moir.metrics import layer_groups, modality_dominance, normalize_answer, parse_option_letter
from moir.models import load_vlm
from moir.router import RouterConfig


def _row(i, **fields):
    row = {"id": f"d/test/{i}", "dataset": "synth-image", "split": "test", "question": f"question {i}?",
           "choices": [], "answer_index": None, "answers": [], "answer_type": None, "hint": "",
           "media_kind": "image", "media_path": f"{i}.png", "has_image": True, "category": ""}
    return {**row, **fields}


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_dirs, synth_images):
    root = tmp_path_factory.mktemp("evaluate")
    manifest = synth_images(root, {"test": 8}, seed=1)["test"]
    rows = read_manifest(manifest).to_pylist()
    text_only = {**rows[0], "id": "synth-image/test/text-only", "media_kind": "none", "media_path": None,
                 "has_image": False}
    manifest = write_manifest(rows + [text_only], root / "manifests" / "with-text.parquet", media_root=root / "raw")
    model = tiny_dirs["tiny-llava"]
    # a "trained" run: LoRA on attention with random B matrices, and the router
    vlm = load_vlm(model)
    torch.manual_seed(0)
    vlm.apply_lora("attn")
    vlm.attach_router(RouterConfig())
    with torch.no_grad():
        for name, param in vlm.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    run = vlm.save_trainable(root / "runs" / "moir-attn")
    return {"root": root, "manifest": manifest, "model": model, "run": run}


def _evaluate(work, out, *extra):
    return main(["--model", str(work["model"]), "--manifest", str(work["manifest"]), "--out-dir", str(out),
                 "--max-new-tokens", "4", "--batch-size", "4", "--device", "cpu", *extra])


def _predictions(directory):
    return {row["id"]: row for row in pq.read_table(directory / "predictions.parquet").to_pylist()}


def test_modes_ranks_dominance_and_robustness(work):
    evals = work["root"] / "eval"
    base_clean, base_no_image = evals / "base" / "clean", evals / "base" / "no-image"
    run_clean, run_noise = evals / "moir-attn" / "clean", evals / "moir-attn" / "noise"
    assert _evaluate(work, base_clean) == 0
    assert _evaluate(work, base_no_image, "--mode", "no-image") == 0
    assert _evaluate(work, run_clean, "--run", str(work["run"]), "--base-eval", str(base_clean)) == 0
    assert _evaluate(work, run_noise, "--run", str(work["run"]), "--mode", "noise", "--clean-eval",
                     str(run_clean), "--vision-split", str(base_no_image / "vision_split.parquet")) == 0
    for directory in (base_clean, base_no_image, run_clean, run_noise):
        assert sorted(p.name for p in directory.iterdir() if not p.name.startswith("judge")) == sorted(
            ["predictions.parquet", "metrics.json"] + (["vision_split.parquet"] if directory == base_no_image else []))

    manifest = {row["id"]: row for row in read_manifest(work["manifest"]).to_pylist()}
    base, run = _predictions(base_clean), _predictions(run_clean)
    metrics = json.loads((run_clean / "metrics.json").read_text())
    assert metrics["run"] == "moir-attn" and metrics["mode"] == "clean" and metrics["n_examples"] == 9
    assert metrics["adapter_description"]["placement"] == "attn" and metrics["adapter_description"]["router"]

    # accuracy: each prediction scored again from the manifest
    for example_id, row in run.items():
        spec = manifest[example_id]
        if spec["choices"]:
            expected = float(parse_option_letter(row["prediction"], len(spec["choices"])) == spec["answer_index"])
        else:
            expected = float(normalize_answer(row["prediction"]) in {normalize_answer(a) for a in spec["answers"]})
        assert row["score"] == expected
    assert metrics["summary"]["acc"] == pytest.approx(100 * np.mean([r["score"] for r in run.values()]))

    # effective ranks at the last hidden state (tiny-llava: 2 layers -> 3 hidden states), deltas against the base
    rank = metrics["effective_rank"]
    assert (rank["hidden_state_index"], rank["n_hidden_states"]) == (2, 3)
    assert run["synth-image/test/text-only"]["erank_visual"] is None
    with_image = [i for i in run if manifest[i]["media_kind"] == "image"]
    delta_visual = np.mean([run[i]["erank_visual"] - base[i]["erank_visual"] for i in with_image])
    delta_text = np.mean([run[i]["erank_text"] - base[i]["erank_text"] for i in run])
    assert rank["delta"]["visual"]["n"] == 8 and rank["delta"]["text"]["n"] == 9
    assert metrics["summary"]["rank_delta_image"] == pytest.approx(delta_visual)
    assert metrics["summary"]["rank_delta_text"] == pytest.approx(delta_text)
    assert abs(delta_visual) > 1e-3  # the run's LoRA and router change the representations

    # MDI/AEI over all layers, from the stored per-layer masses
    values = [modality_dominance(np.mean(run[i]["attn_text"]), run[i]["n_text"], np.mean(run[i]["attn_visual"]),
                                 run[i]["n_visual"]) for i in with_image]
    assert metrics["dominance"]["n"] == 8 and metrics["dominance"]["layers"] == layer_groups(2)
    assert metrics["summary"]["mdi"] == pytest.approx(np.mean([v[0] for v in values]))
    assert metrics["summary"]["aei"] == pytest.approx(np.mean([v[1] for v in values]))

    # the vision split and robustness (examples with an image only)
    split = {r["id"]: r for r in pq.read_table(base_no_image / "vision_split.parquet").to_pylist()}
    no_image = _predictions(base_no_image)
    assert all(split[i]["no_image_correct"] == no_image[i]["correct"] for i in split)
    assert all((split[i]["vision_split"] == "vision_irrelevant") == split[i]["no_image_correct"] for i in split)
    noise = _predictions(run_noise)
    robustness = json.loads((run_noise / "metrics.json").read_text())["robustness"]
    assert robustness["n_without_media"] == 1 and robustness["all"]["n"] == 8
    unchanged = [run[i]["normalized"] == noise[i]["normalized"] for i in with_image]
    assert robustness["all"]["unchanged_rate"] == pytest.approx(100 * np.mean(unchanged))
    assert robustness["vision_dependent"]["n"] + robustness["vision_irrelevant"]["n"] == 8


def test_noise_is_seeded_per_example_and_keeps_the_shape():
    image = PIL.Image.new("RGB", (40, 24))
    first, again, other = noise_like(image, 0, "a"), noise_like(image, 0, "a"), noise_like(image, 0, "b")
    assert first.size == (40, 24)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert not np.array_equal(np.asarray(first), np.asarray(noise_like(image, 1, "a")))
    frames = noise_like([np.zeros((8, 16, 3), np.uint8)] * 3, 0, "v")
    assert [f.shape for f in frames] == [(8, 16, 3)] * 3 and not np.array_equal(frames[0], frames[1])
    big = np.asarray(noise_like(PIL.Image.new("RGB", (256, 256)), 0, "stats"), dtype=float)
    assert abs(big.mean() - 127.5) < 2 and abs(big.std() - 62) < 3  # N(127.5, 64^2), clipped to 0..255


def test_an_interrupted_evaluation_resumes_where_it_stopped(work, monkeypatch):
    reference, out = work["root"] / "resume" / "reference", work["root"] / "resume" / "out"
    args = ("--batch-size", "2", "--flush-every", "2", "--no-analysis")
    assert _evaluate(work, reference, *args) == 0
    original = moir.models.base.VLMWrapper.generate
    calls = []

    def generate(self, batch, max_new_tokens=16):
        calls.append(batch["input_ids"].shape[0])
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return original(self, batch, max_new_tokens)

    monkeypatch.setattr(moir.models.base.VLMWrapper, "generate", generate)
    fail_at = 3
    with pytest.raises(KeyboardInterrupt):
        _evaluate(work, out, *args)
    assert len(list((out / "predictions.parts").glob("part-*.parquet"))) == 2  # 4 examples written
    assert not (out / "predictions.parquet").exists() and not (out / "metrics.json").exists()

    calls.clear()
    fail_at = None
    assert _evaluate(work, out, *args) == 0
    assert calls == [2, 2, 1]  # only the 5 examples left
    assert not (out / "predictions.parts").exists()
    assert _predictions(out) == _predictions(reference)

    # parts made with other settings are not resumed
    fail_at, calls[:] = 2, []
    with pytest.raises(KeyboardInterrupt):
        _evaluate(work, out, *args)
    fail_at, calls[:] = None, []
    assert _evaluate(work, out, *args, "--max-new-tokens", "3") == 0
    assert sum(calls) == 9


def test_bad_inputs_are_clear_errors_before_any_generation(work, caplog, monkeypatch):
    monkeypatch.setattr(moir.models.base.VLMWrapper, "generate", lambda *a, **k: pytest.fail("generated"))
    root = work["root"] / "errors"
    bad_eval = root / "bad-clean"
    bad_eval.mkdir(parents=True)
    (bad_eval / "predictions.parquet").write_bytes(b"not parquet")
    (bad_eval / "metrics.json").write_text(json.dumps({"mode": "clean"}))
    split = root / "split.parquet"
    cases = [
        (["--mode", "noise", "--clean-eval", str(bad_eval), "--vision-split", str(split)],
         f"{bad_eval / 'predictions.parquet'}: not a readable Parquet file"),
        (["--mode", "noise", "--clean-eval", str(root), "--vision-split", str(split)],
         f"{root / 'predictions.parquet'}: not found"),
        (["--mode", "noise", "--clean-eval", str(bad_eval)], "robustness needs both --clean-eval and --vision-split"),
        (["--base-eval", str(bad_eval), "--no-analysis"], "--base-eval (rank deltas) needs clean mode with analysis"),
        (["--judge", "openai"], "--judge openai needs --judge-url and --judge-model"),
        (["--limit", "0"], "--limit must be a positive integer"),
    ]
    for extra, message in cases:
        caplog.clear()
        out = root / "out"
        assert _evaluate(work, out, *extra) == 1
        assert message in caplog.text
        assert not (out / "metrics.json").exists() and not (out / "predictions.parquet").exists()

    table = read_manifest(work["manifest"]).drop_columns(["answers"])
    pq.write_table(table, root / "no-answers.parquet")
    caplog.clear()
    assert main(["--model", str(work["model"]), "--manifest", str(root / "no-answers.parquet"),
                 "--out-dir", str(root / "out")]) == 1
    assert f"{root / 'no-answers.parquet'}: missing column 'answers'" in caplog.text


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that replies by question: "question 0?" -> 3, "question 1?" -> 1, else "fine"."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"data": []}')

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls += 1
        question = body["messages"][1]["content"].split("\n")[0]
        content = {"Question: question 0?": "3", "Question: question 1?": "1"}.get(question, "fine")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(json.dumps({"choices": [{"message": {"content": content}}]}).encode())

    def log_message(self, *args):
        pass


def test_open_ended_questions_are_judged_and_cached(work, caplog):
    root = work["root"] / "judged"
    rows = [_row(i, dataset="mmbench_video", media_kind="none", media_path=None, has_image=False,
                 answers=[f"answer {i}"]) for i in range(3)]
    manifest = write_manifest(rows, root / "mmbench.parquet", media_root=root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.calls = 0
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    args = ["--model", str(work["model"]), "--manifest", str(manifest), "--max-new-tokens", "4",
            "--judge", "openai", "--judge-url", url, "--judge-model", "judge",
            "--judge-cache", str(root / "cache.jsonl")]
    try:
        assert main([*args, "--out-dir", str(root / "a")]) == 0
        assert main([*args, "--out-dir", str(root / "b")]) == 0  # same predictions: every reply from the cache
    finally:
        server.shutdown()
        server.server_close()
    assert server.calls == 3
    predictions = [_predictions(root / "a")[row["id"]] for row in rows]
    assert [(r["judge_reply"], r["score"], r["correct"]) for r in predictions] == [
        ("3", 3.0, True), ("1", 1.0, False), ("fine", -1.0, False)]  # "fine": a failed judgement, -1
    metrics = json.loads((root / "a" / "metrics.json").read_text())
    judged = metrics["accuracy"]["by_protocol"]["open_ended"]
    assert judged["mean_score"] == pytest.approx(4 / 3)  # a failed judgement counts 0
    assert judged["mean_score_valid"] == pytest.approx(2.0) and judged["n_failed"] == 1
    assert judged["n_call_failed"] == 0 and judged["judge_correct_threshold"] == 2
    # the paper's unit: the share judged correct (score >= 2), 1 of 3
    assert judged["accuracy"] == pytest.approx(100 / 3) and metrics["summary"]["acc"] == pytest.approx(100 / 3)
    assert "dimensions" not in judged  # these rows list no MMBench-Video dimension
    assert judged["judge"] == metrics["judge"]["name"] == f"openai:judge@{url}"

    caplog.clear()  # the judge is gone: refused before the model is even loaded
    assert main([*args, "--out-dir", str(root / "c")]) == 1
    assert f"cannot reach the judge at {url}/models" in caplog.text and not (root / "c").exists()
    caplog.clear()
    assert main(["--model", str(work["model"]), "--manifest", str(manifest), "--out-dir", str(root / "d")]) == 1
    assert "open-ended questions; pass --judge" in caplog.text


def test_scoring_by_protocol_on_hand_made_rows():
    rows = [
        _row(0, choices=["cat", "dog", "cow"], answer_index=1, category="animals"),
        _row(1, choices=["cat", "dog"], answer_index=0, has_image=False, media_kind="none", media_path=None),
        _row(2, choices=["a", "b"], answer_index=0),
        _row(3, dataset="vizwiz", answers=["yes"] * 3 + ["no"] * 7, answer_type="yes/no"),
        _row(4, dataset="vizwiz", answers=["2"] * 10, answer_type="number"),
        _row(5, answers=["red"]),
        _row(6, dataset="vizwiz", answers=["unanswerable"] * 10, answer_type="unanswerable"),
        # the official VizWiz evaluation compares with the answers as released: 0 here, 1.0 by vqa_accuracy
        _row(7, dataset="vizwiz", answers=["the dog"] * 3 + ["a dog"] * 3 + ["cat"] * 4, answer_type="other"),
        _row(8, dataset="vizwiz", answers=["red"] * 10, answer_type="other"),
    ]
    predictions = ["B", "The answer is A.", "maybe", "Yes.", "three", "Red", "Unanswerable.", "dog", "unanswerable"]
    scored = score_predictions(rows, predictions, judge=None, judge_cache=None)
    assert [s["protocol"] for s in scored] == (["multiple_choice"] * 3 + ["vizwiz"] * 2 + ["short_answer"]
                                               + ["vizwiz"] * 3)
    assert [s["score"] for s in scored] == [1.0, 1.0, 0.0, pytest.approx(0.9), 0.0, 1.0, 1.0, 0.0, 0.0]
    assert [s["correct"] for s in scored] == [True, True, False, True, False, True, True, False, False]
    assert [s["normalized"] for s in scored] == ["option:B", "option:A", "text:maybe", "text:yes", "text:3",
                                                 "text:red", "text:unanswerable", "text:dog", "text:unanswerable"]
    metrics = accuracy_metrics(rows, scored, None, predictions)
    choice, vizwiz = metrics["by_protocol"]["multiple_choice"], metrics["by_protocol"]["vizwiz"]
    assert choice["accuracy"] == pytest.approx(200 / 3) and choice["n_unparsed"] == 1
    assert choice["image_subset"] == {"n": 2, "accuracy": pytest.approx(50.0)}
    assert choice["by_category"] == {"animals": {"n": 1, "accuracy": 100.0}}
    assert vizwiz["accuracy"] == pytest.approx(38.0) and vizwiz["metric"].startswith("VizWiz accuracy")
    assert vizwiz["by_answer_type"] == {
        "number": {"n": 1, "accuracy": 0.0}, "other": {"n": 2, "accuracy": 0.0},
        "unanswerable": {"n": 1, "accuracy": 100.0}, "yes/no": {"n": 1, "accuracy": pytest.approx(90.0)},
    }
    # one unanswerable question; two predictions say "unanswerable" (one wrongly): precision 1/2 at the only
    # threshold, recall 1 -> AP 50; F1 = 2*1 / (2*1 + 1 + 0)
    unanswerability = vizwiz["unanswerability"]
    assert unanswerability["average_precision"] == pytest.approx(50.0)
    assert unanswerability["f1"] == pytest.approx(200 / 3)
    assert (unanswerability["n_unanswerable"], unanswerability["n_predicted_unanswerable"]) == (1, 2)
    assert metrics["value"] == pytest.approx(100 * (1 + 1 + 0 + 0.9 + 0 + 1 + 1 + 0 + 0) / 9)
    with pytest.raises(ValueError, match="predictions"):
        accuracy_metrics(rows, scored, None)


class _FlakyJudge:
    """Replies "3" except for the questions in `fails`, where the call fails (JudgeError, as after retries)."""

    name = "flaky"

    def __init__(self, fails):
        self.fails, self.calls = set(fails), 0

    def __call__(self, prompt):
        self.calls += 1
        if any(f"Question: question {i}?\n" in prompt for i in self.fails):
            raise JudgeError("HTTP 503: overloaded")
        return "3"


def _mmbench_rows(n):
    dimensions = ["Counting", "Video Topic; Causal Reasoning", "OCR"]
    return [_row(i, dataset="mmbench_video", media_kind="none", media_path=None, has_image=False,
                 answers=[f"answer {i}"], category=dimensions[i % 3]) for i in range(n)]


def test_a_failed_judge_call_is_a_failed_judgement_not_an_aborted_stage(tmp_path):
    rows = _mmbench_rows(6)
    predictions = [f"prediction {i}" for i in range(6)]
    judge, cache = _FlakyJudge(fails={1}), JudgeCache(tmp_path / "cache.jsonl")
    scored = score_predictions(rows, predictions, judge, cache, max_failed_share=0.2)
    assert [s["score"] for s in scored] == [3.0, -1.0, 3.0, 3.0, 3.0, 3.0]
    assert [s["judge_reply"] for s in scored] == ["3", None, "3", "3", "3", "3"]
    assert len(cache.replies) == 5  # the failed call is not cached: a rerun asks again
    judged = accuracy_metrics(rows, scored, "flaky", predictions)["by_protocol"]["open_ended"]
    assert judged["n_failed"] == judged["n_call_failed"] == 1
    assert judged["mean_score"] == pytest.approx(15 / 6) and judged["mean_score_valid"] == pytest.approx(3.0)
    assert judged["accuracy"] == pytest.approx(500 / 6)
    # VLMEvalKit's dimension ratings: question 1 (failed) is in "Video Topic" (CP) and "Causal Reasoning" (TR)
    dims = judged["dimensions"]
    assert dims["fine_all"]["Counting"] == 3.0 and dims["fine_all"]["Video Topic"] == pytest.approx(1.5)
    assert dims["coarse_all"]["TR"] == pytest.approx(1.5) and dims["coarse_valid"]["TR"] == 3.0
    assert dims["fine_all"]["Hallucination"] is None  # no question: VLMEvalKit's nan, null in JSON

    judge = _FlakyJudge(fails={0, 1, 2})
    with pytest.raises(EvaluationError, match=r"2 of 6 calls failed.*judge.max_failed_share = 0.2"):
        score_predictions(rows, predictions, judge, JudgeCache(tmp_path / "other.jsonl"), max_failed_share=0.2)
    assert judge.calls == 2  # stopped as soon as the share could no longer be met


def test_judged_correct_threshold_is_a_setting(tmp_path):
    rows = _mmbench_rows(3)
    cache = JudgeCache(tmp_path / "cache.jsonl")
    replies = iter(["1", "2", "3"])

    class Judge:
        name = "fixed"

        def __call__(self, prompt):
            return next(replies)

    scored = score_predictions(rows, ["a", "b", "c"], Judge(), cache, judge_correct_threshold=3)
    assert [s["correct"] for s in scored] == [False, False, True]
    judged = accuracy_metrics(rows, scored, "fixed", ["a", "b", "c"], 3)["by_protocol"]["open_ended"]
    assert judged["accuracy"] == pytest.approx(100 / 3) and judged["judge_correct_threshold"] == 3
    scored = score_predictions(rows, ["a", "b", "c"], Judge(), cache)  # from the cache, default threshold 2
    assert [s["correct"] for s in scored] == [False, True, True]


def test_robustness_on_hand_made_predictions(tmp_path):
    rows = [_row(i) for i in range(4)] + [_row(4, media_kind="none", media_path=None, has_image=False)]
    clean = {"directory": tmp_path, "predictions": [{"id": r["id"], "normalized": v} for r, v in
                                                    zip(rows, ["text:a", "text:b", "option:A", "option:B", "text:x"])]}
    noisy = [{"normalized": v} for v in ["text:a", "text:c", "option:A", "option:C", "text:y"]]
    split = {rows[0]["id"]: "vision_irrelevant", rows[1]["id"]: "vision_irrelevant",
             rows[2]["id"]: "vision_dependent", rows[3]["id"]: "vision_dependent"}
    result = robustness_metrics(clean, split, tmp_path / "split.parquet", rows, noisy)
    assert result["n_without_media"] == 1  # the text-only question is not counted
    assert result["all"] == {"unchanged_rate": pytest.approx(50.0), "n": 4}
    assert result["vision_irrelevant"] == {"unchanged_rate": pytest.approx(50.0), "n": 2}
    assert result["vision_dependent"] == {"unchanged_rate": pytest.approx(50.0), "n": 2}
    del split[rows[3]["id"]]
    with pytest.raises(Exception, match="not in the split"):
        robustness_metrics(clean, split, tmp_path / "split.parquet", rows, noisy)
    assert math.isclose(robustness_metrics(clean, {**split, rows[3]["id"]: "vision_irrelevant"}, tmp_path, rows,
                                           noisy)["vision_irrelevant"]["unchanged_rate"], 100 / 3)


def test_videos_on_qwen_clean_noise_and_no_image(tmp_path, tiny_dirs, synth_videos):
    manifest, frames = synth_videos(tmp_path, "test", 3, seed=3)
    model = tiny_dirs["tiny-qwen2.5-vl"]
    common = ["--model", str(model), "--manifest", str(manifest), "--frames", str(frames), "--max-new-tokens", "3",
              "--device", "cpu"]
    clean, no_image, noise = tmp_path / "clean", tmp_path / "no-image", tmp_path / "noise"
    assert main([*common, "--out-dir", str(clean)]) == 0
    assert main([*common, "--mode", "no-image", "--out-dir", str(no_image)]) == 0
    assert main([*common, "--mode", "noise", "--clean-eval", str(clean), "--vision-split",
                 str(no_image / "vision_split.parquet"), "--out-dir", str(noise)]) == 0
    metrics = json.loads((clean / "metrics.json").read_text())
    assert metrics["dominance"]["n"] == 3 and metrics["effective_rank"]["visual"]["n"] == 3
    # 8 frames of 32 px: 4 temporal patches x (8 x 8 patches merged 2 x 2) = 64 video tokens
    assert all(row["n_visual"] == 64 for row in _predictions(clean).values())
    assert json.loads((noise / "metrics.json").read_text())["robustness"]["all"]["n"] == 3


def test_an_unknown_mmbench_video_dimension_is_named(tmp_path):
    rows = _mmbench_rows(3)
    rows[2]["category"] = "Counting; Telepathy"
    scored = score_predictions(rows, ["a", "b", "c"], _FlakyJudge(fails=()), JudgeCache(tmp_path / "c.jsonl"))
    with pytest.raises(EvaluationError, match=r"example d/test/2: field 'category' names unknown .*'Telepathy'"):
        accuracy_metrics(rows, scored, "flaky", ["a", "b", "c"])


def test_hint_reliance_and_the_router_effect_of_a_moir_run(work):
    """The reliance section recomputed from the manifest; the router effect against an evaluation of the same LoRA
    without its router (a saved run whose router was removed)."""
    from moir.metrics.reliance import follows_hint, hint_label, hinted_answer

    root = work["root"] / "router-effect"
    vlm = load_vlm(work["model"])
    vlm.load_trainable(work["run"])
    with torch.no_grad():  # gates away from 0.5, differently per channel
        vlm.router.logit_a.normal_(0.0, 2.0)
        vlm.router.logit_b.normal_(0.0, 2.0)
    gates = {"a": torch.sigmoid(vlm.router.logit_a.detach()), "b": torch.sigmoid(vlm.router.logit_b.detach())}
    with_router = vlm.save_trainable(root / "runs" / "with-router")
    vlm.router = None
    without_router = vlm.save_trainable(root / "runs" / "without-router")
    on, off = root / "eval" / "on", root / "eval" / "off"
    assert _evaluate(work, on, "--run", str(with_router), "--no-analysis") == 0
    assert _evaluate(work, off, "--run", str(without_router), "--no-analysis") == 0
    metrics = json.loads((on / "metrics.json").read_text())
    assert json.loads((off / "metrics.json").read_text())["router_effect"] is None

    manifest = {row["id"]: row for row in read_manifest(work["manifest"]).to_pylist()}
    predictions_on, predictions_off = _predictions(on), _predictions(off)
    labels = {i: hint_label(row["category"]) for i, row in manifest.items()}
    right = [predictions_on[i]["correct"] for i in manifest if labels[i] is True]
    wrong = [i for i in manifest if labels[i] is False]
    assert right and wrong  # the synthetic test split has both kinds of hint
    reliance = metrics["reliance"]
    assert reliance["acc_hint_right"] == pytest.approx(100 * np.mean(right))
    assert reliance["acc_hint_wrong"] == pytest.approx(100 * np.mean([predictions_on[i]["correct"] for i in wrong]))
    followed = [follows_hint(manifest[i]["choices"], predictions_on[i]["prediction"],
                             hinted_answer(manifest[i]["hint"])) for i in wrong]
    assert reliance["hint_follow"] == pytest.approx(100 * np.mean(followed))
    assert metrics["summary"]["hint_follow"] == reliance["hint_follow"]

    effect = metrics["router_effect"]
    changed = [predictions_on[i]["normalized"] != predictions_off[i]["normalized"] for i in manifest]
    assert effect["changed_share"] == pytest.approx(100 * np.mean(changed))
    assert effect["n"] == 9 and effect["n_tv"] == 9 and 0 < effect["tv_mean"] <= effect["tv_max"] <= 1
    k = round(0.1 * vlm.hidden_size)
    for name in ("a", "b"):
        direction = effect["directions"][name]
        counts = np.array(direction["selection_counts"])
        assert direction["n_routed"] == 8 and counts.sum() == 8 * k  # the text-only question is not routed
        assert direction["n_channels_selected"] == (counts > 0).sum()
        shift = (gates[name] - 0.5).abs().numpy()
        assert direction["alpha_shift_selected_max"] == pytest.approx(shift[counts > 0].max())
        assert direction["alpha_shift_selected_mean"] == pytest.approx(shift[counts > 0].mean())
        assert direction["alpha_shift_max"] == pytest.approx(shift.max())
        assert direction["alpha"] == pytest.approx(gates[name].tolist())

    # router_effect_limit: the same measurement on the first 4 examples only, and the metrics say so
    limited = root / "eval" / "limited"
    assert _evaluate(work, limited, "--run", str(with_router), "--no-analysis", "--router-effect-limit", "4") == 0
    effect4 = json.loads((limited / "metrics.json").read_text())["router_effect"]
    first4 = list(manifest)[:4]
    assert effect4["n"] == 4 and effect4["n_tv"] == 4
    assert effect4["changed_share"] == pytest.approx(
        100 * np.mean([predictions_on[i]["normalized"] != predictions_off[i]["normalized"] for i in first4]))
    assert _predictions(limited) == predictions_on  # the predictions themselves are all the examples'
