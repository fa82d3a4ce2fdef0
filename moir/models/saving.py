"""Saving and loading what a run trains: the LoRA adapter (peft's files) and the router (its config and gates),
together with `moir_adapter.json`, which says which base model family, LoRA placement and router they belong to."""

from __future__ import annotations

import json
import os
from pathlib import Path

from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from moir.models.lora import PLACEMENTS
from moir.router import RouterConfig
from moir.storage import atomic_directory

ADAPTER_FILE = "moir_adapter.json"
ROUTER_CONFIG_FILE = "router.json"
ROUTER_WEIGHTS_FILE = "router.safetensors"
LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHTS_FILE = "adapter_model.safetensors"


def write_trainable(vlm, directory: Path) -> None:
    """Write the LoRA adapter, the router (config and gates) and their description into the existing `directory`
    (`save_trainable`, or a caller that writes more files beside them into one atomic directory)."""
    if isinstance(vlm.model, PeftModel):
        vlm.model.save_pretrained(directory)
    if vlm.router is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in vlm.router.state_dict().items()},
                  directory / ROUTER_WEIGHTS_FILE)
        (directory / ROUTER_CONFIG_FILE).write_text(
            json.dumps({"dim": vlm.router.dim, **vlm.router.config.to_dict()}, indent=2) + "\n")
    description = {"family": vlm.family, "base_model": vlm.name, "placement": vlm.placement,
                   "router": vlm.router is not None}
    (directory / ADAPTER_FILE).write_text(json.dumps(description, indent=2) + "\n")


def save_trainable(vlm, directory: str | os.PathLike) -> Path:
    """Write the LoRA adapter and the router (config and gates) to `directory`, whole or not at all."""
    with atomic_directory(directory) as staging:
        write_trainable(vlm, staging)
    return Path(directory)


def load_trainable(vlm, directory: str | os.PathLike) -> None:
    """Load what `save_trainable` wrote: LoRA weights (applied first if the model has none) and the router
    (attached as saved; detached when the saved run had none)."""
    directory = Path(directory)
    description_file = directory / ADAPTER_FILE
    if not description_file.is_file():
        raise FileNotFoundError(f"{directory}: not a saved adapter (no {ADAPTER_FILE})")
    description = json.loads(description_file.read_text())
    if description.get("family") != vlm.family:
        raise ValueError(f"{description_file}: field 'family' is {description.get('family')!r}, "
                         f"but the model is {vlm.family!r}")
    placement = description.get("placement")
    if placement is not None:
        if placement not in PLACEMENTS:
            raise ValueError(f"{description_file}: field 'placement' is {placement!r}, not one of {PLACEMENTS}")
        if vlm.placement is None:
            lora = json.loads((directory / LORA_CONFIG_FILE).read_text())
            vlm.apply_lora(placement, r=lora["r"], alpha=lora["lora_alpha"], dropout=lora["lora_dropout"])
        elif vlm.placement != placement:
            raise ValueError(f"{description_file}: LoRA placement {placement!r}, but this model has "
                             f"{vlm.placement!r} applied")
        state = load_file(directory / LORA_WEIGHTS_FILE, device=str(vlm.device))
        result = set_peft_model_state_dict(vlm.model, state)
        if result.unexpected_keys:
            raise ValueError(f"{directory / LORA_WEIGHTS_FILE}: unexpected tensors {result.unexpected_keys[:5]}")
    if description.get("router"):
        router_config = json.loads((directory / ROUTER_CONFIG_FILE).read_text())
        dim = router_config.pop("dim")
        if dim != vlm.hidden_size:
            raise ValueError(f"{directory / ROUTER_CONFIG_FILE}: field 'dim' is {dim}, the model's width is "
                             f"{vlm.hidden_size}")
        vlm.attach_router(RouterConfig(**router_config))
        vlm.router.load_state_dict(load_file(directory / ROUTER_WEIGHTS_FILE, device=str(vlm.device)))
    else:
        vlm.router = None
