"""The Qwen2.5-VL wrapper on tiny-qwen2.5-vl: images and videos, M-RoPE positions, the cache, saving, bad input."""

from __future__ import annotations

import pytest
import torch
from model_helpers import (
    cached,
    image_examples,
    load,
    option_letter_tokens,
    randomize_lora,
    reference_inputs,
    reference_model,
    video_examples,
)

from moir.models import EncodedMedia, Example
from moir.router import RouterConfig

NAME = "tiny-qwen2.5-vl"


def mixed_examples() -> list[Example]:
    """Image, text-only and video questions in one batch."""
    return image_examples() + video_examples()


@pytest.fixture(scope="module")
def vlm(tiny_dirs):
    return load(tiny_dirs, NAME)


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    return reference_model(tiny_dirs[NAME])


def test_collate_matches_processor_and_masks(vlm):
    examples = mixed_examples()
    batch = vlm.collate(examples, with_answer=False)
    inputs = reference_inputs(vlm, examples)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw", "video_grid_thw"):
        assert torch.equal(batch[key], inputs[key]), key
    torch.testing.assert_close(batch["second_per_grid_ts"], inputs["second_per_grid_ts"].float())
    assert batch["second_per_grid_ts"].tolist() == [1.0, 2.0]  # temporal patch of 2 frames at 2 and 1 fps

    batch = vlm.collate(examples, with_answer=True)
    decode = vlm.tokenizer.decode
    for row, example in enumerate(examples):
        ids = batch["input_ids"][row]
        # a token may carry the template's space before the prompt's first word (" Is"): strip it
        assert decode(ids[batch["text_mask"][row]]).strip() == example.prompt  # no system prompt, no template token
        assert decode(ids[batch["answer_mask"][row]]) == f"{example.answer}<|im_end|>"
    n_visual = batch["visual_mask"].sum(1).tolist()
    grids = torch.cat([batch["image_grid_thw"], batch["video_grid_thw"]]).prod(-1) // 4
    assert n_visual == [grids[0], grids[1], 0, grids[2], grids[3]]
    masks = batch["text_mask"].int() + batch["visual_mask"].int() + batch["answer_mask"].int()
    assert masks.max() == 1


def test_positions_are_the_models_m_rope_positions(vlm, reference):
    examples = mixed_examples()
    batch = vlm.collate(examples, with_answer=False)
    inputs = reference_inputs(vlm, examples)
    positions = vlm.language_model_inputs(batch)["position_ids"]
    expected, _ = reference.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], inputs["video_grid_thw"],
        inputs["second_per_grid_ts"], inputs["attention_mask"],
    )
    assert torch.equal(positions, expected)
    # 3-D positions: height and width differ inside an image, so this is not the 1-D fallback
    assert not torch.equal(positions[1], positions[2])


@pytest.mark.parametrize("ratio", [None, 0.0])
def test_equals_unmodified_model_when_moir_is_off(vlm, reference, ratio):
    examples = mixed_examples()
    vlm.router = None if ratio is None else vlm.attach_router(RouterConfig(ratio=ratio))
    inputs = reference_inputs(vlm, examples)
    batch = vlm.collate(examples, with_answer=False)
    with torch.no_grad():
        expected = reference(**inputs).logits
        got = vlm.forward(batch).logits
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=0, atol=1e-5)
    expected_ids = reference.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    expected_texts = [t.strip() for t in vlm.tokenizer.batch_decode(expected_ids, skip_special_tokens=True)]
    assert vlm.generate(batch, max_new_tokens=6) == expected_texts
    vlm.router = None


def test_cache_gives_the_logits_of_pixels_for_images_and_videos(vlm):
    examples = mixed_examples()
    from_cache = cached(vlm, examples)
    assert from_cache[3].media.kind == "video" and from_cache[3].media.grid_thw.tolist() == [[2, 8, 8]]
    assert from_cache[3].media.features.shape == (128, 32)
    vlm.attach_router(RouterConfig(ratio=0.25))
    with torch.no_grad():
        from_pixels = vlm.forward(vlm.collate(examples)).logits
        from_features = vlm.forward(vlm.collate(from_cache)).logits
    vlm.router = None
    torch.testing.assert_close(from_features, from_pixels, rtol=0, atol=1e-5)


def test_cached_features_are_in_raster_order(vlm, reference):
    """The merger of the cached rows gives the model's own visual tokens, in the model's order."""
    examples = mixed_examples()
    inputs = reference_inputs(vlm, examples)
    with torch.no_grad():
        images = reference.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        videos = reference.model.get_video_features(inputs["pixel_values_videos"],
                                                    inputs["video_grid_thw"]).pooler_output
        encoded = [media for media in vlm.encode(examples) if media is not None]
        merged = [vlm.project(media.features, media.grid_thw) for media in encoded]
    for got, expected in zip(merged, [*images, *videos]):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_answer_tokens_do_not_change_routed_visual_tokens(vlm):
    vlm.attach_router(RouterConfig(ratio=0.25, align="attend"))
    first = mixed_examples()
    second = [Example(ex.id, ex.prompt, "another answer entirely", ex.media_kind, pixels=ex.pixels, fps=ex.fps)
              for ex in first]
    batches = [vlm.collate(examples) for examples in (first, second)]
    with torch.no_grad():
        visual = [vlm.input_embeddings(batch)[batch["visual_mask"]] for batch in batches]
        vlm.router = None
        unrouted = vlm.input_embeddings(batches[0])[batches[0]["visual_mask"]]
    assert torch.equal(visual[0], visual[1])
    assert not torch.equal(visual[0], unrouted)


def test_frame_rate_sets_temporal_positions(vlm):
    slow, fast = video_examples()[:1] * 2
    fast = Example(fast.id, fast.prompt, fast.answer, "video", pixels=fast.pixels, fps=4.0)
    positions = [vlm.language_model_inputs(vlm.collate([ex]))["position_ids"] for ex in (slow, fast)]
    assert not torch.equal(positions[0][0], positions[1][0])  # temporal row
    assert torch.equal(positions[0][1:], positions[1][1:])  # height and width rows


def test_save_and_reload_give_the_same_outputs(tiny_dirs, tmp_path):
    trained = load(tiny_dirs, NAME)
    trained.attach_router(RouterConfig(ratio=0.1, directions="a"))
    trained.apply_lora("proj")
    randomize_lora(trained, seed=2)
    batch = trained.collate(mixed_examples())
    trained.save_trainable(tmp_path / "run")
    reloaded = load(tiny_dirs, NAME)
    reloaded.load_trainable(tmp_path / "run")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.forward(batch).logits, trained.forward(batch).logits, rtol=0, atol=0)


def test_bad_cache_is_a_clear_error(vlm, tiny_dirs):
    video = cached(vlm, video_examples()[:1])[0]
    media = video.media
    video.media = EncodedMedia(media.features[:100], media.grid_thw, "video")
    with pytest.raises(ValueError, match=r"vid-0: cached video features have shape \(100, 32\).*\(128, 32\)"):
        vlm.collate([video])
    video.media = EncodedMedia(media.features, media.grid_thw, "image")
    with pytest.raises(ValueError, match="vid-0: media_kind is 'video' but its cached features are of a 'image'"):
        vlm.collate([video])
    llava = load(tiny_dirs, "tiny-llava")
    llava_cached = cached(llava, image_examples()[:1])[0]
    with pytest.raises(ValueError, match="img-0: cached features have no grid_thw.*llava cache"):
        vlm.collate([llava_cached])
    smaller_budget = {**vlm.encoder_signature(), "image_pixels": "256-1024"}
    with pytest.raises(ValueError, match="image_pixels: meta.json has '256-1024', the model needs '256-4096'"):
        vlm.check_encoder_signature(smaller_budget, "meta.json")
    mixed = [cached(vlm, image_examples()[:1])[0], image_examples()[1]]
    with pytest.raises(ValueError, match="mixes cached features and pixels"):
        vlm.collate(mixed)


def test_signature_fingerprints_the_encoder_before_the_cache_point(tiny_dirs):
    vlm = load(tiny_dirs, NAME)
    signature = vlm.encoder_signature()
    with torch.no_grad():
        vlm.vision_tower.merger.mlp[0].weight.add_(1.0)  # after the cache point: the cache stays valid
        assert vlm.encoder_signature() == signature
        vlm.vision_tower.blocks[0].mlp.gate_proj.weight.add_(1.0)  # before it: the cache is stale
        assert vlm.encoder_signature()["vision_weights"] != signature["vision_weights"]


@pytest.mark.parametrize("letter", "ABCD")
def test_an_option_letter_is_the_same_token_in_the_prompt_and_the_answer(vlm, letter):
    prompt_tokens, answer_tokens = option_letter_tokens(vlm, letter)
    assert answer_tokens == [letter]  # one token, the letter itself, with no space merged into it
    assert prompt_tokens.count(letter) == 1  # the token that starts the option's line
