"""LoRA placements: which modules of a vision-language model a placement wraps (docs/design.md), and
`apply_lora`, which wraps them (peft).

    attn  the language model's attention projections  q_proj, k_proj, v_proj, o_proj   (4 per layer)
    mlp   the language model's MLP projections        gate_proj, up_proj, down_proj    (3 per layer)
    proj  the multimodal projector                    LLaVA multi_modal_projector.linear_1/2,
                                                      Qwen2.5-VL visual.merger.mlp.0/2 (2)

Never a vision-tower module: CLIP's attention also has q/k/v projections and Qwen2.5-VL's vision blocks also have
gate/up/down projections, so modules are chosen by their full name under the language model's (or the
projector's) prefix, never by a suffix alone. The result is the explicit list of full module names handed to peft.
"""

from __future__ import annotations

import logging
import warnings

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

log = logging.getLogger(__name__)

PLACEMENTS = ("attn", "mlp", "proj")

LANGUAGE_MODEL_PREFIX = "model.language_model.layers."
ATTENTION_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_PROJECTIONS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
PROJECTOR_MODULES = {
    "llava": ("model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"),
    "qwen2_5_vl": ("model.visual.merger.mlp.0", "model.visual.merger.mlp.2"),
}


def lora_target_modules(model: nn.Module, family: str, placement: str) -> list[str]:
    """Full names of the nn.Linear modules that `placement` wraps in `model` (a Hugging Face model of `family`)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown LoRA placement {placement!r}; choose one of {PLACEMENTS}")
    if family not in PROJECTOR_MODULES:
        raise ValueError(f"unknown model family {family!r}; choose one of {tuple(PROJECTOR_MODULES)}")
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if placement == "proj":
        targets = list(PROJECTOR_MODULES[family])
        missing = [name for name in targets if name not in linear]
        if missing:
            raise ValueError(f"{family} model has no projector module(s) {missing}")
        return targets
    suffixes = ATTENTION_PROJECTIONS if placement == "attn" else MLP_PROJECTIONS
    targets = sorted(
        (name for name in linear if name.startswith(LANGUAGE_MODEL_PREFIX) and name.endswith(suffixes)),
        key=lambda name: (int(name[len(LANGUAGE_MODEL_PREFIX):].split(".")[0]), name),
    )
    if not targets:
        raise ValueError(f"{family} model has no language-model modules ending in {suffixes}")
    return targets


def apply_lora(vlm, placement: str, r: int = 16, alpha: int = 32, dropout: float = 0.05) -> int:
    """Wrap the placement's modules with LoRA (peft) and freeze everything else of the model.

    Returns the run's trainable parameter count (LoRA, plus the router's gates when one is attached).
    """
    if isinstance(vlm.model, PeftModel):
        raise ValueError(f"LoRA is already applied ({vlm.placement}); load the model afresh for another")
    targets = lora_target_modules(vlm.hf_model, vlm.family, placement)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    training = vlm.hf_model.training
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        vlm.model = get_peft_model(vlm.hf_model, config)
    vlm.model.train(training)  # the new LoRA dropout layers follow the model's mode
    vlm.placement = placement
    count = vlm.num_trainable_parameters()
    log.info("LoRA %s (r=%d, alpha=%d) on %d modules: %d trainable parameters%s", placement, r, alpha,
             len(targets), count, " (with the router's gates)" if vlm.router is not None else "")
    return count
