"""LoRA placements: the intended modules only (never the vision tower), the expected counts, checkpointing."""

from __future__ import annotations

import re

import pytest
import torch
from model_helpers import image_examples, load, randomize_lora
from torch import nn

from moir.models.hub_configs import build_architecture
from moir.models.lora import lora_target_modules
from moir.router import RouterConfig

LANGUAGE_LAYER = r"model\.language_model\.layers\.\d+\."
EXPECTED = {
    "attn": LANGUAGE_LAYER + r"self_attn\.(q|k|v|o)_proj",
    "mlp": LANGUAGE_LAYER + r"mlp\.(gate|up|down)_proj",
}
PROJECTOR = {
    "llava": ["model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"],
    "qwen2_5_vl": ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"],
}
VISION_TOWER = {"llava": "model.vision_tower.", "qwen2_5_vl": "model.visual.blocks."}
PER_LAYER = {"attn": 4, "mlp": 3}


def expected_modules(family: str, placement: str, names: list[str]) -> list[str]:
    if placement == "proj":
        return PROJECTOR[family]
    return [name for name in names if re.fullmatch(EXPECTED[placement], name)]


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
@pytest.mark.parametrize("placement", ["attn", "mlp", "proj"])
def test_placement_wraps_only_the_intended_modules(tiny_dirs, name, placement):
    vlm = load(tiny_dirs, name)
    n_layers = vlm.hf_model.config.text_config.num_hidden_layers
    linear_names = [n for n, m in vlm.hf_model.named_modules() if isinstance(m, nn.Linear)]
    expected = expected_modules(vlm.family, placement, linear_names)
    assert len(expected) == (2 if placement == "proj" else PER_LAYER[placement] * n_layers)

    vlm.attach_router(RouterConfig())
    signature = vlm.encoder_signature()
    count = vlm.apply_lora(placement, r=4, alpha=8, dropout=0.0)
    assert vlm.encoder_signature() == signature  # the encoder cache stays valid whatever LoRA wraps
    wrapped = sorted(n.removeprefix("base_model.model.") for n, m in vlm.model.named_modules()
                     if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict))
    assert wrapped == sorted(expected)
    assert not any(n.startswith(VISION_TOWER[vlm.family]) for n in wrapped)

    modules = dict(vlm.hf_model.named_modules())
    lora_params = sum(4 * (modules[n].base_layer.in_features + modules[n].base_layer.out_features) for n in wrapped)
    assert count == lora_params + 2 * vlm.hidden_size  # LoRA A and B, plus both router gates
    trainable = {n for n, p in vlm.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.parametrize("model_id, family, n_layers", [
    ("llava-hf/llava-1.5-7b-hf", "llava", 32),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", 28),
])
def test_placements_on_the_real_architectures(model_id, family, n_layers):
    """The real vision towers have q/k/v (CLIP) and gate/up/down (Qwen) projections too: none may be chosen."""
    model = build_architecture(model_id)  # on the meta device: no memory
    vision_suffixes = {"llava": "self_attn.q_proj", "qwen2_5_vl": "mlp.gate_proj"}[family]
    assert any(n.startswith(VISION_TOWER[family]) and n.endswith(vision_suffixes) for n, _ in model.named_modules())
    for placement, per_layer in PER_LAYER.items():
        targets = lora_target_modules(model, family, placement)
        assert len(targets) == per_layer * n_layers
        assert all(re.fullmatch(EXPECTED[placement], n) for n in targets)
    assert lora_target_modules(model, family, "proj") == PROJECTOR[family]


def test_unknown_placement_or_second_lora_is_an_error(tiny_dirs):
    vlm = load(tiny_dirs, "tiny-llava")
    with pytest.raises(ValueError, match="unknown LoRA placement 'qkv'"):
        vlm.apply_lora("qkv")
    vlm.apply_lora("attn")
    with pytest.raises(ValueError, match="LoRA is already applied"):
        vlm.apply_lora("mlp")


def test_reloading_into_another_placement_is_an_error(tiny_dirs, tmp_path):
    saved = load(tiny_dirs, "tiny-llava")
    saved.apply_lora("attn")
    saved.save_trainable(tmp_path / "run")
    other = load(tiny_dirs, "tiny-llava")
    other.apply_lora("mlp")
    with pytest.raises(ValueError, match="LoRA placement 'attn', but this model has 'mlp'"):
        other.load_trainable(tmp_path / "run")
    qwen = load(tiny_dirs, "tiny-qwen2.5-vl")
    with pytest.raises(ValueError, match="field 'family' is 'llava', but the model is 'qwen2_5_vl'"):
        qwen.load_trainable(tmp_path / "run")


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_activation_checkpointing_gives_the_same_gradients(tiny_dirs, name):
    gradients = []
    for checkpointing in (False, True):
        vlm = load(tiny_dirs, name)
        vlm.attach_router(RouterConfig(ratio=0.25))
        vlm.apply_lora("attn", dropout=0.0)
        randomize_lora(vlm, seed=3)
        if checkpointing:
            vlm.enable_gradient_checkpointing()
            assert vlm.hf_model.is_activation_checkpointing
        vlm.model.train()
        vlm.forward(vlm.collate(image_examples())).loss.backward()
        gradients.append([p.grad.clone() for p in vlm.trainable_parameters()])
    assert all(g.abs().sum() > 0 for g in gradients[0])  # the gates and every LoRA matrix learn
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)
