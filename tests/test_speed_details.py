"""Speed details: activation checkpointing every n layers, no KV cache in teacher-forced passes, the effective rank
from the smaller Gram matrix, and noise drawn at the processor's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import image_examples
from transformers.modeling_layers import GradientCheckpointingLayer

from moir.evaluate.noise import llava_max_pixels, noise_frames, noise_image, noise_size
from moir.metrics.rank import effective_rank
from moir.models import load_vlm


def decoder_flags(vlm) -> list[bool]:
    layers = vlm.hf_model.model.language_model.layers
    return [layer.gradient_checkpointing for layer in layers]


@pytest.mark.parametrize("every", [1, 2])
def test_checkpointing_every_n_layers(tiny_dirs, every):  # noqa: F811
    vlm = load_vlm(tiny_dirs["tiny-llava"])
    vlm.enable_gradient_checkpointing(every_n_layers=every)
    checkpointed = [m.gradient_checkpointing for m in vlm.hf_model.modules()
                    if isinstance(m, GradientCheckpointingLayer)]
    # exactly every n-th layer, counted over the model's layers in order (vision tower, then the decoder)
    assert checkpointed == [i % every == 0 for i in range(len(checkpointed))]
    flags = decoder_flags(vlm)
    assert sorted(set(flags)) == ([True] if every == 1 else [False, True])  # 2 consecutive layers: one of them
    vlm.apply_lora("attn", r=4, alpha=8, dropout=0.0)
    vlm.model.train()
    loss = vlm.forward(vlm.collate(image_examples())).loss
    loss.backward()
    assert all(p.grad is not None for p in vlm.trainable_parameters())
    with pytest.raises(ValueError, match="every_n_layers"):
        vlm.enable_gradient_checkpointing(every_n_layers=0)


def test_teacher_forced_pass_keeps_no_kv_cache(tiny_dirs):  # noqa: F811
    vlm = load_vlm(tiny_dirs["tiny-qwen2.5-vl"])
    assert vlm.hf_model.config.text_config.use_cache or vlm.hf_model.config.use_cache
    with torch.no_grad():
        output = vlm.forward(vlm.collate(image_examples()))
    assert output.past_key_values is None


def test_effective_rank_from_the_gram_matrix_equals_the_svd():
    generator = torch.Generator().manual_seed(0)
    for shape in [(5, 40), (40, 5), (30, 30)]:
        x = torch.randn(*shape, generator=generator, dtype=torch.float64) * torch.linspace(0.1, 3, shape[1])
        sigma = torch.linalg.svdvals(x)
        p = sigma / sigma.sum()
        assert effective_rank(x) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)


def test_noise_at_the_processor_size():
    assert noise_size(3024, 4032, llava_max_pixels(3024, 4032)) == (336, 448)
    assert noise_size(100, 200, None) == (100, 200) and noise_size(100, 200, 10**6) == (100, 200)
    assert min(noise_size(3000, 4000, llava_max_pixels(3000, 4000))) >= 336
    first = np.asarray(noise_image(3024, 4032, 0, "ex-1", llava_max_pixels(3024, 4032)))
    assert first.shape == (336, 448, 3) and first.dtype == np.uint8
    assert np.array_equal(first, np.asarray(noise_image(3024, 4032, 0, "ex-1", llava_max_pixels(3024, 4032))))
    assert not np.array_equal(first, np.asarray(noise_image(3024, 4032, 0, "ex-2", llava_max_pixels(3024, 4032))))
    assert abs(first.mean() - 127.5) < 2 and abs(first.std() - 64) < 3
    frames = noise_frames(4, 720, 1280, 0, "v", 100352)
    assert len(frames) == 4 and frames[0].shape[0] * frames[0].shape[1] <= 100352
    assert not np.array_equal(frames[0], frames[1])
