"""Visual-token compression (moir.compression) on the tiny models: the scores are the attention they claim to be,
selection keeps exactly the top-k in their original order, a keep ratio of 1 is the uncompressed model, the cache
gives the logits of the pixels, Qwen2.5-VL's kept tokens keep their M-RoPE positions; the plan's Table 5 arms, the
config's checks and Table 5 of the report."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from model_helpers import cached, image_examples, video_examples
from moir import compression, plan
from moir.dataset import load_examples
from moir.encoder_cache.cache import main as cache_main
from moir.models import load_vlm
from moir.models.pixel_budget import process_videos
from moir.report import table5
from moir.report.build import write_table5

REPO = plan.REPO


@pytest.fixture(autouse=True)
def uncompressed(llava, qwen):
    """Every test starts (and leaves) both shared models without compression."""
    llava.compress(None)
    qwen.compress(None)
    yield
    llava.compress(None)
    qwen.compress(None)


def logits(vlm, examples, keep_ratio):
    vlm.compress(keep_ratio)
    with torch.no_grad():
        batch = vlm.collate(examples, with_answer=True)
        return vlm.forward(batch).logits, batch


# ---------------------------------------------------------------------------------------------- selection


def test_keep_mask_keeps_the_top_k_of_each_group_in_their_original_order():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.9, 0.2, 0.5, 0.4, 0.8, 0.7, 0.6])
    mask = compression.keep_mask(scores, [10], 0.3)  # k = 3: 0.9, 0.9 (ties: the earlier first), 0.8
    assert mask.nonzero().squeeze(1).tolist() == [1, 3, 7]
    mask = compression.keep_mask(scores, [4, 6], 0.5)  # per group: 2 of 4, 3 of 6
    assert mask.nonzero().squeeze(1).tolist() == [1, 3, 7, 8, 9]
    assert compression.keep_mask(scores, [10], 1.0).all()
    assert compression.keep_mask(scores, [10], 0.01).sum() == 1  # k = max(1, round(r n))
    assert [compression.keep_count(576, r) for r in (0.25, 58 / 576, 1.0)] == [144, 58, 576]
    with pytest.raises(ValueError, match="do not split"):
        compression.keep_mask(scores, [4, 4], 0.5)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, math.nan, math.inf, True])
def test_a_bad_keep_ratio_is_refused_naming_it(ratio):
    with pytest.raises(ValueError, match="keep_ratio must be a number in"):
        compression.check_keep_ratio(ratio)


# ---------------------------------------------------------------------------------------------- scores


def test_llava_scores_are_the_cls_attention_of_the_feature_layer(llava, tiny_dirs):
    """SDPA returns no attention maps: the recomputed [CLS] row equals eager attention's own map."""
    eager = load_vlm(tiny_dirs["tiny-llava"], attn_implementation="eager")
    examples = image_examples()[:2]
    pixels = eager.processor.image_processor(images=[ex.pixels for ex in examples], return_tensors="pt")
    with torch.no_grad():
        out = eager.vision_tower(pixels["pixel_values"], output_attentions=True)
    layer = llava.hf_model.config.vision_feature_layer % (len(out.attentions) + 1) - 1  # -2: the layer before last
    expected = out.attentions[layer][:, :, 0, 1:].mean(1)  # [CLS] -> patches, heads averaged
    scores = torch.stack([media.scores for media in llava.encode(examples)])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert scores.shape == (2, llava.tokens_per_image)


def test_qwen_scores_come_from_the_attention_the_block_computes(qwen):
    """The recomputed per-frame attention maps of the last full-attention block, applied to its values, give the
    block's own attention output: queries, keys, rotary embedding, scale and frames are the model's."""
    block = qwen.score_block()
    attention = block.attn
    seen = {}
    inputs = compression.capture_inputs(block)
    handle = attention.register_forward_hook(lambda module, args, output: seen.update(output=output))
    examples = video_examples()
    processed = process_videos(qwen.processor.video_processor, [np.stack(examples[0].pixels)], qwen.pixel_budget)
    try:
        with inputs as captured, torch.no_grad():
            qwen.vision_tower(processed["pixel_values_videos"], grid_thw=processed["video_grid_thw"])
    finally:
        handle.remove()
    hidden, kwargs = captured["args"][0], captured["kwargs"]
    query, keys = compression.vision_block_qk(block, hidden, kwargs["position_embeddings"])
    values = attention.qkv(block.norm1(hidden)).reshape(hidden.shape[0], 3, attention.num_heads, -1)[:, 2]
    bounds = kwargs["cu_seqlens"].tolist()
    assert len(bounds) - 1 == int(processed["video_grid_thw"][0, 0])  # one segment per temporal patch group
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        probs = compression.segment_attention(query[start:end], keys[start:end], attention.scaling)
        parts.append((probs @ values[start:end].transpose(0, 1).float()).transpose(0, 1).reshape(end - start, -1))
    with torch.no_grad():
        torch.testing.assert_close(attention.proj(torch.cat(parts)), seen["output"], rtol=1e-4, atol=1e-5)
        received = compression.received_attention(block, hidden, kwargs["cu_seqlens"], kwargs["position_embeddings"],
                                                  chunk=5)
    for start, end in zip(bounds[:-1], bounds[1:]):  # each frame's queries spread a mass of 1 over its patches
        assert received[start:end].sum().item() == pytest.approx(1.0, abs=1e-5)
    media = qwen.encode(examples[:1])[0]
    t, h, w = media.grid_thw[0].tolist()
    assert media.scores.shape == (t * h * w // qwen.merge_unit,)


# ---------------------------------------------------------------------------------------------- the batch


def test_a_keep_ratio_of_one_is_the_uncompressed_model(llava, qwen):
    for vlm, examples in ((llava, image_examples()), (qwen, image_examples()[:2] + video_examples())):
        full, _ = logits(vlm, examples, None)
        same, _ = logits(vlm, examples, 1.0)
        torch.testing.assert_close(same, full, rtol=0, atol=0)
        vlm.compress(None)
        texts = vlm.generate(vlm.collate(examples, with_answer=False), max_new_tokens=4)
        vlm.compress(1.0)
        assert vlm.generate(vlm.collate(examples, with_answer=False), max_new_tokens=4) == texts


def test_the_kept_tokens_are_the_top_k_by_score_in_their_original_order(llava):
    examples = cached(llava, image_examples())
    _, batch = logits(llava, examples, 0.25)
    k = compression.keep_count(llava.tokens_per_image, 0.25)
    assert batch["visual_mask"].sum(1).tolist() == [k, k, 0]
    expected = []
    for example in examples[:2]:
        top = torch.topk(example.media.scores, k).indices.sort().values  # distinct scores: no ties here
        expected.append(example.media.features[top])
    torch.testing.assert_close(batch["image_features"], torch.cat(expected))
    # the rest of each row is untouched: the same text, labels and masks, the sequence shorter by the dropped tokens
    llava.compress(None)
    full = llava.collate(examples, with_answer=True)
    for row in range(3):
        keep = ~full["visual_mask"][row] & full["attention_mask"][row].bool()
        kept = batch["attention_mask"][row].bool() & ~batch["visual_mask"][row]
        for key in ("input_ids", "labels", "text_mask", "answer_mask", "query_mask"):
            assert batch[key][row][kept].tolist() == full[key][row][keep].tolist(), key


def test_qwen_kept_tokens_keep_their_positions_and_every_frame_keeps_tokens(qwen):
    examples = cached(qwen, image_examples()[:2] + video_examples())
    qwen.compress(None)
    full = qwen.collate(examples, with_answer=False)  # left-padded: generation
    with torch.no_grad():
        full_positions = qwen.language_model_inputs(full)["position_ids"]
    qwen.compress(0.3)
    batch = qwen.collate(examples, with_answer=False)
    for row, example in enumerate(examples):
        media = example.media
        groups = qwen.media_groups(media)
        flags = compression.keep_mask(media.scores, groups, 0.3)
        assert [int(part.sum()) for part in flags.split(groups)] == [compression.keep_count(n, 0.3) for n in groups]
        visual = full["visual_mask"][row]
        keep = full["attention_mask"][row].bool().clone()
        keep[visual.nonzero().squeeze(1)] = flags
        valid = batch["attention_mask"][row].bool()
        assert torch.equal(batch["position_ids"][:, row][:, valid], full_positions[:, row][:, keep])
        assert batch["input_ids"][row][valid].tolist() == full["input_ids"][row][keep].tolist()
    with torch.no_grad():  # generation runs on the compressed batch with the explicit positions
        texts = qwen.generate(batch, max_new_tokens=3)
    assert len(texts) == len(examples)


def dump(manifest, model_dir, out, *extra):
    assert cache_main(["dump", "--manifest", str(manifest), "--model", str(model_dir), "--out", str(out),
                       "--dtype", "float32", *extra]) == 0
    return out


def test_logits_from_the_cache_equal_those_from_pixels_with_compression(llava, tiny_dirs, synth_images, tmp_path):
    manifest = synth_images(tmp_path / "image", {"test": 4}, seed=3)["test"]
    cache = dump(manifest, tiny_dirs["tiny-llava"], tmp_path / "cache")
    from_pixels = load_examples(manifest, vlm=llava)
    from_cache = load_examples(manifest, cache_dir=cache, vlm=llava)
    assert all(ex.media.scores.shape == (llava.tokens_per_image,) for ex in from_cache)
    pixel_logits, pixel_batch = logits(llava, list(from_pixels), 0.25)
    cache_logits, cache_batch = logits(llava, list(from_cache), 0.25)
    assert torch.equal(pixel_batch["input_ids"], cache_batch["input_ids"])
    torch.testing.assert_close(cache_logits, pixel_logits, rtol=1e-5, atol=1e-5)


def test_qwen_video_logits_from_the_cache_equal_those_from_pixels_with_compression(qwen, tiny_dirs, synth_videos,
                                                                                  tmp_path):
    manifest, frames = synth_videos(tmp_path / "video", "test", 3, seed=4)
    cache = dump(manifest, tiny_dirs["tiny-qwen2.5-vl"], tmp_path / "cache", "--frames", str(frames))
    from_pixels = load_examples(manifest, frames_path=frames, vlm=qwen)
    from_cache = load_examples(manifest, cache_dir=cache, vlm=qwen)
    pixel_logits, pixel_batch = logits(qwen, list(from_pixels), 0.5)
    cache_logits, cache_batch = logits(qwen, list(from_cache), 0.5)
    assert torch.equal(pixel_batch["position_ids"], cache_batch["position_ids"])
    torch.testing.assert_close(cache_logits, pixel_logits, rtol=1e-5, atol=1e-5)


def test_the_score_definition_is_part_of_the_encoder_signature(llava):
    assert llava.encoder_signature()["scores"] == compression.SCORE_DEFINITION


# ---------------------------------------------------------------------------------------------- plan, config


def config(suite: str) -> dict:
    value = yaml.safe_load((REPO / "config.yaml").read_text())
    value["suite"] = suite
    return value


def test_the_plan_has_the_table5_arms_and_evaluations():
    found = plan.Plan(config("demo"))
    names = {"synth-image__tiny-llava__attn__ft+keep0.25__seed0",
             "synth-image__tiny-llava__attn__moir-k0.1+keep0.25__seed0"}
    assert names <= set(found.runs)
    for name in names:
        assert json.loads(found.train_settings(name).to_json())["keep_ratio"] == 0.25
        assert json.loads(found.evaluate_settings(f"{name}/clean").to_json())["keep_ratio"] == 0.25
        assert found.run(name).arm.keep_ratio == 0.25
    base = "synth-image__tiny-llava__base+keep0.25/clean"
    assert found.evaluations[base].run is None
    assert json.loads(found.evaluate_settings(base).to_json())["keep_ratio"] == 0.25
    # the uncompressed runs' settings carry no keep ratio (their JSON is as it was)
    assert "keep_ratio" not in found.train_settings("synth-image__tiny-llava__attn__ft__seed0").to_json()
    assert "keep_ratio" not in found.evaluate_settings("synth-image__tiny-llava__base/clean").to_json()
    assert set(found.report_settings().train_metrics) == set(found.table5_runs())
    assert len(found.table5_runs()) == 4  # FT, MoIR, and both with compression
    paper = plan.Plan(config("paper"))
    assert "vizwiz__llava-1.5-7b__attn__ft+keep0.100694__seed0" in paper.runs
    assert "compression.py" in " ".join(plan.code_files("train"))


@pytest.mark.parametrize("value", [0, 1.5, math.nan, -0.25])
def test_the_config_refuses_a_bad_keep_ratio_naming_the_key(value):
    bad = config("demo")
    bad["suites"]["demo"]["table5"]["keep_ratios"] = [value]
    with pytest.raises(plan.PlanError, match=r"suites\.demo\.table5\.keep_ratios\[0\]"):
        plan.validate_config(bad, REPO / "workflow" / "schemas" / "config.schema.yaml")


def test_the_config_refuses_an_unknown_table5_model():
    bad = config("demo")
    bad["suites"]["demo"]["table5"]["model"] = "nope"
    with pytest.raises(plan.PlanError, match=r"suites\.demo\.table5\.model"):
        plan.validate_config(bad, REPO / "workflow" / "schemas" / "config.schema.yaml")


# ---------------------------------------------------------------------------------------------- Table 5


def write_evaluation(root, name, summary, mdi, correct):
    """metrics.json and predictions.parquet of a clean evaluation whose every question has MDI `mdi` (one layer,
    attention 0.5 on 10 text tokens and 0.5/mdi... scaled so (A_T/10)/(A_V/20) = mdi)."""
    directory = root / name / "clean"
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps({"summary": summary}))
    n = len(correct)
    a_visual = 0.5 * 20 / (10 * mdi)
    table = pa.table({"id": [f"q{i}" for i in range(n)], "correct": correct, "n_text": [10] * n,
                      "n_visual": [20] * n, "attn_text": [[0.5]] * n, "attn_visual": [[a_visual]] * n})
    pq.write_table(table, directory / "predictions.parquet")
    return str(directory / "metrics.json"), str(directory / "predictions.parquet")


def test_table5_from_fabricated_metrics(tmp_path):
    tables = plan.Tables.from_config(config("demo")["suites"]["demo"])
    seeds = [0, 1]
    evaluations, predictions, train_metrics = {}, {}, {}
    dataset, model = "synth-image", "tiny-llava"
    specs = {  # name -> (MDI per question, accuracy, visual tokens, step seconds)
        f"{dataset}__{model}__base": (3.0, 50.0, 64.0, None),
        f"{dataset}__{model}__base+keep0.25": (1.5, 45.0, 16.0, None),
    }
    for arm in tables.table5_arms():
        compressed = arm.keep_ratio is not None
        for seed in seeds:
            specs[arm.run(seed).name] = (1.0 if compressed else 2.0, 60.0 + seed, 16.0 if compressed else 64.0,
                                         0.5 if compressed else 1.0)
    for name, (mdi, acc, tokens, step) in specs.items():
        summary = {"acc": acc, "mdi": mdi, "aei": 1.0, "acc_hint_right": 70.0, "acc_hint_wrong": 40.0,
                   "hint_follow": 30.0, "visual_tokens": tokens}
        metrics, preds = write_evaluation(tmp_path, name, summary, mdi, [True, False] * 10)
        evaluations[f"{name}/clean"], predictions[f"{name}/clean"] = metrics, preds
        if step is not None:
            path = tmp_path / f"{name}.jsonl"
            path.write_text("\n".join(json.dumps({"kind": "step", "step": i, "step_time_s": step * (1 + i % 2)})
                                      for i in range(5)) + "\n" + json.dumps({"kind": "epoch", "epoch": 0}) + "\n")
            train_metrics[name] = str(path)
    settings = plan.ReportSettings(tables=tables.to_dict(), seeds=seeds, modality={}, evaluations=evaluations,
                                   gates={}, reference_tables=None, reference_robustness=None,
                                   predictions=predictions, train_metrics=train_metrics)
    frame = table5.table5_frame(settings, plan.Tables.from_dict(settings.tables))
    rows = {row["arm"]: row for row in frame.iter_rows(named=True)}
    assert list(rows) == ["base", "base+keep0.25", "ft", "moir-k0.1", "ft+keep0.25", "moir-k0.1+keep0.25"]
    compressed = rows["ft+keep0.25"]
    assert compressed["acc"] == pytest.approx(60.5) and compressed["visual_tokens"] == 16.0
    assert compressed["step_time_rel"] == pytest.approx(0.5)  # median 0.5 s (1 s with alternate doubling) vs 1 s
    assert compressed["reference"] == "ft"
    assert (compressed["mdi_diff"], compressed["mdi_diff_low"], compressed["mdi_diff_high"]) == pytest.approx(
        (-1.0, -1.0, -1.0))  # every question's MDI 1 vs 2
    assert compressed["acc_diff"] == pytest.approx(0.0) and compressed["mdi_n"] == 20
    free = rows["base+keep0.25"]
    assert free["reference"] == "base" and free["mdi_diff"] == pytest.approx(-1.5) and free["step_time_rel"] is None
    assert rows["ft"]["mdi_diff"] is None and rows["ft"]["step_time_rel"] == pytest.approx(1.0)
    (tmp_path / "report").mkdir()
    markdown = write_table5(frame, tmp_path / "report")
    assert "| ft+keep0.25 | 0.25 |" in markdown and "-1.00 [-1.00, -1.00]" in markdown
    assert (tmp_path / "report" / "table5.csv").read_text().startswith("dataset,model,placement,arm,keep_ratio")
    assert r"\Delta" in (tmp_path / "report" / "table5.tex").read_text()
    missing = dataclasses.replace(settings, train_metrics={})
    with pytest.raises(table5.Table5Error, match="train_metrics.jsonl was passed for the run"):
        table5.table5_frame(missing, plan.Tables.from_dict(settings.tables))
