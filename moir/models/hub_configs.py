"""The config.json of the paper's hub models, written into the repository.

With them a benchmark (or a test) builds the real architectures, LLaVA-1.5 7B/13B and Qwen2.5-VL-7B, with random
weights (or on the meta device, with no memory at all) without a download. The dicts are the hub files' model
fields as published (llava-hf/llava-1.5-7b-hf, llava-hf/llava-1.5-13b-hf, Qwen/Qwen2.5-VL-7B-Instruct); the
config classes fill in the defaults the files leave out (the Llama text configs of LLaVA give only what differs
from LlamaConfig's defaults, which are Llama-2-7B's).
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from moir.models import FAMILIES

_CLIP_VIT_L_336 = {
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "vocab_size": 32000,
}

LLAVA_1_5_7B = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "vision_config": _CLIP_VIT_L_336,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}

LLAVA_1_5_13B = {
    **LLAVA_1_5_7B,
    "text_config": {
        "_name_or_path": "lmsys/vicuna-13b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 40,
        "num_hidden_layers": 40,
        "num_key_value_heads": 40,
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
}

QWEN2_5_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}

HUB_CONFIGS = {
    "llava-hf/llava-1.5-7b-hf": LLAVA_1_5_7B,
    "llava-hf/llava-1.5-13b-hf": LLAVA_1_5_13B,
    "Qwen/Qwen2.5-VL-7B-Instruct": QWEN2_5_VL_7B,
}


def hub_config(model_id: str) -> PretrainedConfig:
    """The transformers config of one of the paper's hub models, from the fields above."""
    if model_id not in HUB_CONFIGS:
        raise ValueError(f"no stored config for {model_id!r}; stored: {sorted(HUB_CONFIGS)}")
    fields = copy.deepcopy(HUB_CONFIGS[model_id])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def build_architecture(model_id: str, device: str | torch.device = "meta",
                       dtype: torch.dtype = torch.bfloat16) -> PreTrainedModel:
    """The real architecture of `model_id` with random weights (on the meta device by default: no memory)."""
    config = hub_config(model_id)
    _, model_class = FAMILIES[config.model_type]
    with torch.device(device):
        return model_class._from_config(config, dtype=dtype)
