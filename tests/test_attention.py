"""The SDPA attention hook against eager attention maps on the tiny models: the per-group masses must agree."""

import numpy as np
import PIL.Image
import pytest
import torch

from moir.evaluate.attention import decoder_attention_modules, record_group_attention
from moir.models import Example, load_vlm
from moir.router import RouterConfig


@pytest.fixture(scope="module")
def vlms(tiny_dirs):
    return {name: load_vlm(directory) for name, directory in tiny_dirs.items()}


def _examples(family: str) -> list[Example]:
    rng = np.random.default_rng(0)

    def image(size):
        return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))

    examples = [
        Example("a", "What colour is the shape?", "red", "image", pixels=image(32)),
        Example("b", "Is the circle on the left?\nAnswer the question using a single word or phrase.", "yes no",
                "image", pixels=image(32)),
        Example("c", "Is the sky blue?", "yes", "none"),
    ]
    if family == "tiny-qwen2.5-vl":
        frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
        examples.append(Example("d", "Which way does it move?", "up", "video", pixels=frames, fps=2.0))
    return examples


def _eager_masses(vlm, batch) -> torch.Tensor:
    """The same quantity from the attention maps that eager attention returns (B, layers, 2)."""
    model = vlm.hf_model
    maps = []
    hooks = [module.register_forward_hook(lambda m, args, out: maps.append(out[1].float()))
             for module in decoder_attention_modules(model)]
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            vlm.forward(batch)
    finally:
        model.set_attn_implementation("sdpa")
        for hook in hooks:
            hook.remove()
    masses = torch.zeros(batch["input_ids"].shape[0], len(maps), 2)
    for layer, weights in enumerate(maps):
        weights = weights.mean(dim=1)  # heads averaged: (B, L, L)
        for row in range(weights.shape[0]):
            answer_rows = weights[row, batch["answer_mask"][row]]
            masses[row, layer, 0] = answer_rows[:, batch["text_mask"][row]].sum(-1).mean()
            masses[row, layer, 1] = answer_rows[:, batch["visual_mask"][row]].sum(-1).mean()
    return masses


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded-batch", "single-example"])
def test_hook_equals_eager_attention(vlms, name, padded):
    vlm = vlms[name]
    examples = _examples(name) if padded else _examples(name)[:1]  # one example: SDPA runs without a mask
    batch = vlm.collate(examples, with_answer=True)
    groups = {"text": batch["text_mask"], "visual": batch["visual_mask"]}
    with torch.no_grad(), record_group_attention(vlm.hf_model, batch["answer_mask"], groups) as record:
        hooked = vlm.forward(batch)
    with torch.no_grad():
        plain = vlm.forward(batch)
    torch.testing.assert_close(hooked.logits, plain.logits, rtol=0, atol=0)  # the hook leaves the output alone
    assert record.group_names == ["text", "visual"]
    assert record.mass.shape == (len(examples), len(decoder_attention_modules(vlm.hf_model)), 2)
    torch.testing.assert_close(record.mass, _eager_masses(vlm, batch), rtol=1e-5, atol=1e-6)
    assert (record.mass[:, :, 0] > 0).all()
    if padded:
        assert (record.mass[2, :, 1] == 0).all()  # the text-only example has no visual tokens


def test_hook_sees_through_lora_and_router(tiny_dirs):
    vlm = load_vlm(tiny_dirs["tiny-llava"])
    vlm.apply_lora("attn")
    vlm.attach_router(RouterConfig())
    batch = vlm.collate(_examples("tiny-llava")[:2], with_answer=True)
    groups = {"text": batch["text_mask"], "visual": batch["visual_mask"]}
    with torch.no_grad(), record_group_attention(vlm.model, batch["answer_mask"], groups) as record:
        vlm.forward(batch)
    torch.testing.assert_close(record.mass, _eager_masses(vlm, batch), rtol=1e-5, atol=1e-6)


def test_hook_refuses_eager_models_and_nesting(vlms):
    vlm = vlms["tiny-llava"]
    batch = vlm.collate(_examples("tiny-llava")[:1], with_answer=True)
    groups = {"text": batch["text_mask"]}
    vlm.hf_model.set_attn_implementation("eager")
    try:
        with pytest.raises(ValueError, match="needs the decoder on 'sdpa'"):
            with record_group_attention(vlm.hf_model, batch["answer_mask"], groups):
                pass
    finally:
        vlm.hf_model.set_attn_implementation("sdpa")
    with record_group_attention(vlm.hf_model, batch["answer_mask"], groups):
        with pytest.raises(RuntimeError, match="nested"):
            with record_group_attention(vlm.hf_model, batch["answer_mask"], groups):
                pass
        with torch.no_grad():
            vlm.forward(batch)
