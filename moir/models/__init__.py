"""Model wrappers: the layer between Hugging Face vision-language models and the rest of the pipeline.

    from moir.models import load_vlm, EncodedMedia, Example
    vlm = load_vlm("llava-hf/llava-1.5-7b-hf", device="cuda", revision="main")  # or a local directory
    batch = vlm.collate(examples, with_answer=True)
    out = vlm.forward(batch)                              # .loss (answer tokens only), .logits
    texts = vlm.generate(vlm.collate(examples, with_answer=False), max_new_tokens=16)

`collate` returns a dict of tensors: input_ids, attention_mask, labels (-100 except answer tokens; only with
answers), text_mask (the prompt's text tokens: the router's text mask and MDI's "T" group), visual_mask (the
visual-token positions: MDI's "O" group), answer_mask, and the media: `image_features` / `video_features` (cached
encoder output) or `pixel_values` / `pixel_values_videos` (processed pixels), plus for Qwen2.5-VL
`image_grid_thw`, `video_grid_thw`, `second_per_grid_ts` and `mm_token_type_ids`.

`attach_router(RouterConfig(...))` turns MoIR on; `apply_lora(placement)` wraps "attn", "mlp" or "proj";
`save_trainable(dir)` / `load_trainable(dir)` write and read the LoRA adapter and the router together;
`encode(examples)` is the encoder cache's input (features and the visual tokens' importance scores);
`encoder_signature()` what a cache must match. `compress(keep_ratio)` turns visual-token compression on
(moir.compression): `collate` then keeps the top share of each image's (video frame's) visual tokens.
By concern: base.py (the wrapper and the fusion seam, where the router sits), inputs.py (Example, EncodedMedia,
media checks), batching.py (prompt rendering, tokenisation, masks, collation), lora.py (placements, apply_lora),
saving.py (save/load of LoRA + router), llava.py / qwen2_5_vl.py (each family), tiny.py (the tiny models).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

from moir.models.base import EncodedMedia, Example, VLMWrapper, check_model_directory
from moir.models.llava import LlavaWrapper
from moir.models.pixel_budget import PixelBudget, apply_pixel_budget
from moir.models.qwen2_5_vl import Qwen2_5_VLWrapper
from moir.models.tiny import build_tiny_model

log = logging.getLogger(__name__)

FAMILIES = {
    "llava": (LlavaWrapper, LlavaForConditionalGeneration),
    "qwen2_5_vl": (Qwen2_5_VLWrapper, Qwen2_5_VLForConditionalGeneration),
}

__all__ = ["EncodedMedia", "Example", "FAMILIES", "VLMWrapper", "build_tiny_model", "load_vlm"]


def load_vlm(
    path_or_hub_id: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    pixel_budget: PixelBudget | None = None,
) -> VLMWrapper:
    """Load a model and its processor (hub id or local directory) behind the wrapper of its family (`VLMWrapper`).

    The family comes from the model's config (`model_type`). dtype: bfloat16 on a GPU, float32 on the CPU unless
    given. A local directory must hold the config, tokenizer and processor files; a missing one is named.
    revision: the hub revision (branch, tag or commit) of config, processor and weights alike; None is the hub's
    default branch, and a local directory ignores it. pixel_budget (Qwen2.5-VL only): the image and video pixel
    limits (moir.models.pixel_budget) replacing the processor's; part of the encoder signature. Weights are
    loaded straight onto `device` (device_map), not through a CPU copy.
    """
    name = str(path_or_hub_id)
    path = Path(path_or_hub_id)
    if path.is_dir():
        check_model_directory(path)
    elif path.exists():
        raise NotADirectoryError(f"{path}: a model must be a hub id or a directory, this is a file")
    config = AutoConfig.from_pretrained(name, revision=revision)
    if config.model_type not in FAMILIES:
        raise ValueError(f"{name}: model_type {config.model_type!r} is not supported; "
                         f"supported families: {sorted(FAMILIES)}")
    wrapper_class, model_class = FAMILIES[config.model_type]
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    processor = AutoProcessor.from_pretrained(name, revision=revision)
    if pixel_budget is not None:
        if config.model_type != "qwen2_5_vl":
            raise ValueError(f"{name}: a pixel budget applies to qwen2_5_vl models, this is {config.model_type!r}")
        apply_pixel_budget(processor, pixel_budget)
    model = model_class.from_pretrained(
        name, dtype=dtype, attn_implementation=attn_implementation, revision=revision, device_map=device
    )
    log.info("loaded %s (%s, %s) on %s", name, config.model_type, dtype, device)
    wrapper = wrapper_class(model, processor, name)
    if pixel_budget is not None:
        wrapper.pixel_budget = pixel_budget
    return wrapper
