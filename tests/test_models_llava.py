"""The LLaVA wrapper on tiny-llava: batches, the seam against the unmodified model, the cache, saving, bad input."""

from __future__ import annotations

import shutil

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
    video,
)

from moir.models import EncodedMedia, Example, load_vlm
from moir.router import RouterConfig

NAME = "tiny-llava"


@pytest.fixture(scope="module")
def vlm(tiny_dirs):
    return load(tiny_dirs, NAME)


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    return reference_model(tiny_dirs[NAME])


def test_collate_matches_processor_and_masks(vlm):
    examples = image_examples()
    batch = vlm.collate(examples, with_answer=False)
    inputs = reference_inputs(vlm, examples)
    assert torch.equal(batch["input_ids"], inputs["input_ids"])
    assert torch.equal(batch["attention_mask"], inputs["attention_mask"])
    assert batch["attention_mask"][2, 0] == 0  # left padding for generation

    batch = vlm.collate(examples, with_answer=True)
    decode = vlm.tokenizer.decode
    for row, example in enumerate(examples):
        ids = batch["input_ids"][row]
        # a token may carry the template's space before the prompt's first word (" Is"): strip it
        assert decode(ids[batch["text_mask"][row]]).strip() == example.prompt
        assert decode(ids[batch["answer_mask"][row]]) == f" {example.answer}</s>"
        assert int(batch["visual_mask"][row].sum()) == (64 if example.media_kind == "image" else 0)
        labels = batch["labels"][row]
        assert torch.equal(labels[batch["answer_mask"][row]], ids[batch["answer_mask"][row]])
        assert (labels[~batch["answer_mask"][row]] == -100).all()
    masks = batch["text_mask"].int() + batch["visual_mask"].int() + batch["answer_mask"].int()
    assert masks.max() == 1  # the groups never overlap
    assert not (masks.bool() & ~batch["attention_mask"].bool()).any()  # and never cover padding
    assert batch["attention_mask"][2, -1] == 0  # right padding for training


def test_memoised_tokenisation_equals_a_fresh_one_and_tells_answers_apart(tiny_dirs):
    """The wrapper memoises each example's tokens (every epoch tokenises the same examples): a batch is the same
    whether it is tokenised fresh or from the memo, and two examples that share a prompt but not an answer (or
    not a medium) each get their own tokens."""
    vlm = load(tiny_dirs, NAME)
    examples = image_examples()
    first = vlm.collate(examples, with_answer=True)
    assert vlm.tokenization_memo  # filled
    again = vlm.collate(examples, with_answer=True)
    fresh = load(tiny_dirs, NAME).collate(examples, with_answer=True)
    for key in ("input_ids", "labels", "text_mask", "answer_mask", "query_mask", "visual_mask"):
        assert torch.equal(first[key], again[key]) and torch.equal(first[key], fresh[key]), key
    other = [Example("img-0b", examples[0].prompt, "blue", "image", pixels=examples[0].pixels),
             Example("txt-0c", examples[0].prompt, "red", "none")]
    batch = vlm.collate(other, with_answer=True)
    decode = vlm.tokenizer.decode
    assert decode(batch["input_ids"][0][batch["answer_mask"][0]]) == " blue</s>"
    assert int(batch["visual_mask"][0].sum()) == 64 and int(batch["visual_mask"][1].sum()) == 0
    generation = vlm.collate(examples, with_answer=False)
    assert not generation["answer_mask"].any()


@pytest.mark.parametrize("ratio", [None, 0.0])
def test_equals_unmodified_model_when_moir_is_off(vlm, reference, ratio):
    examples = image_examples()
    vlm.router = None if ratio is None else vlm.attach_router(RouterConfig(ratio=ratio))
    inputs = reference_inputs(vlm, examples)
    batch = vlm.collate(examples, with_answer=False)
    with torch.no_grad():
        expected = reference(**inputs).logits
        got = vlm.forward(batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    expected_ids = reference.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    expected_texts = [t.strip() for t in vlm.tokenizer.batch_decode(expected_ids, skip_special_tokens=True)]
    assert vlm.generate(batch, max_new_tokens=6) == expected_texts
    vlm.router = None


def test_training_loss_is_the_unmodified_models(vlm, reference):
    batch = vlm.collate(image_examples(), with_answer=True)
    pixels = {"pixel_values": batch["pixel_values"]}
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"], **pixels).loss
        assert torch.allclose(vlm.forward(batch).loss, expected, atol=1e-6)


def test_moir_changes_the_output(vlm):
    batch = vlm.collate(image_examples(), with_answer=True)
    with torch.no_grad():
        plain = vlm.forward(batch).logits
        vlm.attach_router(RouterConfig(ratio=0.25))
        routed = vlm.forward(batch).logits
    vlm.router = None
    assert not torch.allclose(plain, routed)


def test_cache_gives_the_logits_of_pixels(vlm):
    examples = image_examples()
    from_cache = cached(vlm, examples)
    assert from_cache[0].media.features.shape == (64, 32) and from_cache[2].media is None
    vlm.attach_router(RouterConfig(ratio=0.25))
    with torch.no_grad():
        from_pixels = vlm.forward(vlm.collate(examples)).logits
        from_features = vlm.forward(vlm.collate(from_cache)).logits
    vlm.router = None
    torch.testing.assert_close(from_features, from_pixels, rtol=0, atol=1e-5)


@pytest.mark.parametrize("align", ["pool", "attend"])
def test_answer_tokens_do_not_change_routed_visual_tokens(vlm, align):
    vlm.attach_router(RouterConfig(ratio=0.25, align=align))
    first = image_examples()
    second = [Example(ex.id, ex.prompt, "a much longer and different answer", ex.media_kind, pixels=ex.pixels)
              for ex in first]
    batches = [vlm.collate(examples) for examples in (first, second)]
    with torch.no_grad():
        visual = [vlm.input_embeddings(batch)[batch["visual_mask"]] for batch in batches]
        vlm.router = None
        unrouted = vlm.input_embeddings(batches[0])[batches[0]["visual_mask"]]
    assert torch.equal(visual[0], visual[1])
    assert not torch.equal(visual[0], unrouted)  # the router did act on them


def test_save_and_reload_give_the_same_outputs(tiny_dirs, tmp_path):
    trained = load(tiny_dirs, NAME)
    trained.attach_router(RouterConfig(ratio=0.25, align="attend"))
    trained.apply_lora("mlp")
    randomize_lora(trained, seed=1)
    batch = trained.collate(image_examples())
    trained.save_trainable(tmp_path / "run")

    reloaded = load(tiny_dirs, NAME)
    with torch.no_grad():
        before = reloaded.forward(batch).logits
        reloaded.load_trainable(tmp_path / "run")
        expected = trained.forward(batch).logits
        got = reloaded.forward(batch).logits
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert reloaded.router.config == trained.router.config and reloaded.placement == "mlp"


def test_wrong_number_of_visual_tokens_is_a_clear_error(vlm):
    example = cached(vlm, image_examples()[:1])[0]
    example.media = EncodedMedia(example.media.features[:60], None, "image")
    with pytest.raises(ValueError, match=r"img-0.*\(60, 32\).*\(64, 32\)"):
        vlm.collate([example])
    batch = vlm.collate(cached(vlm, image_examples()[:1]))
    batch["image_features"] = batch["image_features"][:60]
    with pytest.raises(ValueError, match="64 image placeholder tokens but its image media give 60"):
        vlm.forward(batch)


def test_cache_from_another_family_or_setting_is_a_clear_error(vlm, tiny_dirs):
    qwen = load(tiny_dirs, "tiny-qwen2.5-vl")
    qwen_cached = cached(qwen, image_examples()[:1])[0]
    with pytest.raises(ValueError, match="grid_thw.*qwen2_5_vl cache"):
        vlm.collate([qwen_cached])
    with pytest.raises(ValueError, match=r"family: cache.json has 'qwen2_5_vl', the model needs 'llava'"):
        vlm.check_encoder_signature(qwen.encoder_signature(), "cache.json")
    other_layer = {**vlm.encoder_signature(), "feature_layer": "-1"}
    with pytest.raises(ValueError, match=r"feature_layer: cache.json has '-1', the model needs '-2'"):
        vlm.check_encoder_signature(other_layer, "cache.json")
    vlm.check_encoder_signature(vlm.encoder_signature(), "cache.json")


def test_bad_input_is_a_clear_error(vlm, tiny_dirs, tmp_path):
    broken = tmp_path / "no-processor"
    shutil.copytree(tiny_dirs[NAME], broken)
    (broken / "processor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no-processor: no processor config \(processor_config.json"):
        load_vlm(broken)
    with pytest.raises(ValueError, match="vid: llava takes images only"):
        vlm.collate([Example("vid", "Which way?", "left", "video", pixels=video(0))])
    with pytest.raises(ValueError, match="q1: media_kind is 'image' but it has neither"):
        vlm.collate([Example("q1", "What?", "red", "image")])
    with pytest.raises(ValueError, match="q2: no answer to train on"):
        vlm.collate([Example("q2", "What?", None, "none")], with_answer=True)
    with pytest.raises(ValueError, match="q3: the prompt contains the image placeholder"):
        vlm.collate([Example("q3", "What is <image>?", "x", "none")])
    with pytest.raises(FileNotFoundError, match="missing.png: image file not found"):
        vlm.load_media("image", tmp_path / "missing.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="corrupt.png: not a readable image"):
        vlm.load_media("image", tmp_path / "corrupt.png")


def test_revision_reaches_every_from_pretrained(vlm, tiny_dirs, monkeypatch):
    """A hub revision pins config, processor and weights alike; a local directory loads the same with one."""
    import moir.models

    revisions = {}
    for name, target in (("config", moir.models.AutoConfig), ("processor", moir.models.AutoProcessor),
                         ("model", moir.models.FAMILIES["llava"][1])):
        def spy(*args, _name=name, _original=target.from_pretrained, **kwargs):
            revisions[_name] = kwargs.get("revision")
            return _original(*args, **kwargs)

        monkeypatch.setattr(target, "from_pretrained", spy)
    pinned = load_vlm(tiny_dirs[NAME], revision="v1.0")
    assert revisions == {"config": "v1.0", "processor": "v1.0", "model": "v1.0"}
    assert pinned.encoder_signature() == vlm.encoder_signature()


@pytest.mark.parametrize("letter", "ABCD")
def test_an_option_letter_is_the_same_token_in_the_prompt_and_the_answer(vlm, letter):
    prompt_tokens, answer_tokens = option_letter_tokens(vlm, letter)
    assert answer_tokens == [letter]  # one token, the letter itself, with no space merged into it
    assert prompt_tokens.count(letter) == 1  # the token that starts the option's line


def test_tiny_llava_reads_the_benchmarks_48_px_in_6_px_patches_with_tied_embeddings(vlm):
    model, processor = vlm.hf_model, vlm.processor
    pixels = processor.image_processor(images=[image_examples()[0].pixels], return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (48, 48)  # the synthetic benchmark's size: no resampling
    features = model.get_image_features(pixel_values=pixels)
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    assert features[0].shape[-2] == 64  # an 8 x 8 grid of 6 px patches
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_tiny_text_layers_is_the_language_models_depth():
    from moir.models.tiny import TINY_TEXT_LAYERS, build_tiny_llava, build_tiny_qwen

    for build in (build_tiny_llava, build_tiny_qwen):
        assert build(seed=0)[0].config.text_config.num_hidden_layers == TINY_TEXT_LAYERS
        deeper = build(seed=0, text_layers=TINY_TEXT_LAYERS + 1)[0]
        assert deeper.config.text_config.num_hidden_layers == len(deeper.model.language_model.layers) == \
            TINY_TEXT_LAYERS + 1
