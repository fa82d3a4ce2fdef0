"""Per-group attention mass of chosen query positions, recorded on the fly while the model runs with SDPA; and the
output of one decoder layer (`record_layer_output`).

MDI and AEI need, for every decoder layer, how much attention the positions that produce the answer (the batch's
`query_mask`: the last prompt token through the last answer token before the end-of-turn token) put on the
prompt's text tokens and on its visual tokens (heads averaged). The record calls these query positions the
"answer mask" (any boolean (batch, length) mask of query rows works). Asking the model for its attention maps would force eager attention and
keep an (heads x L x L) map per layer; instead, `record_group_attention` swaps transformers' "sdpa" entry in the
`AttentionInterface` for a wrapper while a forward pass runs. For the decoder's attention modules the wrapper
calls the original SDPA function for the layer output (so the model's output is exactly what SDPA gives), then
computes softmax(QK^T * scale + mask) for the answer query rows only (A rows instead of L), averages the heads,
and sums the probabilities over each group's key positions. Only a (batch, layers, groups) tensor is kept.
Other modules (the vision tower) pass straight through to SDPA.

The mask is the one the model built for SDPA: a boolean or additive 4-D mask, or None when SDPA ran with its
causal flag (no padding), in which case the causal mask is applied here. Masses are computed in float32.

Usage (one forward pass, no KV cache):

    with record_group_attention(model, answer_mask, {"text": text_mask, "visual": visual_mask}) as record:
        model(**inputs)
    record.mass   # (batch, n_layers, n_groups): mean over each example's answer tokens
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from transformers.modeling_utils import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

_active = False


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of the (language) decoder, in order."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    decoder = base.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None or len(layers) == 0 or not all(hasattr(layer, "self_attn") for layer in layers):
        raise ValueError(f"{type(base).__name__}: cannot find the decoder layers' self_attn modules")
    return list(layers)


def decoder_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every layer of the (language) decoder, in layer order."""
    return [layer.self_attn for layer in decoder_layers(model)]


@contextmanager
def record_layer_output(model: nn.Module, layer: int) -> Iterator[dict[str, torch.Tensor]]:
    """The output hidden states (batch, L, D) of decoder layer `layer` (0-based; negative counts from the end)
    during the forward pass in the block, as the layer returns them: before the decoder's final norm (which
    `hidden_states[-1]` of a transformers model includes). `recorded["output"]` after the pass."""
    layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"decoder layer {layer} does not exist (the decoder has {len(layers)})")
    recorded: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        recorded["output"] = (output[0] if isinstance(output, (tuple, list)) else output).detach()

    handle = layers[layer].register_forward_hook(keep)
    try:
        yield recorded
    finally:
        handle.remove()
    if "output" not in recorded:
        raise RuntimeError(f"decoder layer {layer} was not called")


class GroupAttentionRecord:
    """What one recorded forward pass leaves: `mass` (batch, n_layers, n_groups), NaN where nothing was seen."""

    def __init__(self, answer_mask: torch.Tensor, groups: torch.Tensor, names: list[str], n_layers: int) -> None:
        self.group_names = names
        self.answer_mask = answer_mask
        self.groups = groups
        self.mass = torch.full((answer_mask.shape[0], n_layers, len(names)), float("nan"))
        self.seen = [False] * n_layers

    def reduce(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float):
        batch, heads, q_len, dim = query.shape
        k_len = key.shape[2]
        if q_len != self.answer_mask.shape[1]:
            raise ValueError(
                f"layer {layer}: {q_len} query positions but the answer mask covers {self.answer_mask.shape[1]}; "
                "record one full forward pass (no KV cache)"
            )
        answer_mask = self.answer_mask.to(query.device)
        n_answer = answer_mask.sum(dim=1)  # (B,)
        width = max(int(n_answer.max()), 1)
        # positions of each example's answer tokens, padded with position 0 (masked out below)
        order = torch.argsort((~answer_mask).to(torch.int8), dim=1, stable=True)[:, :width]
        valid = torch.arange(width, device=query.device)[None, :] < n_answer[:, None]  # (B, A)

        rows = torch.gather(query, 2, order[:, None, :, None].expand(batch, heads, width, dim)).float()
        if key.shape[1] != heads:  # grouped-query attention: repeat the key heads as the layer does
            key = key.repeat_interleave(heads // key.shape[1], dim=1)
        scores = torch.matmul(rows, key.float().transpose(-1, -2)) * scaling  # (B, H, A, K)

        if mask is None:  # SDPA ran causal without a mask: query i sees keys j <= i (+ offset of a longer key)
            key_positions = torch.arange(k_len, device=query.device)
            allowed = key_positions[None, None, :] <= (order + (k_len - q_len))[:, :, None]
            scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        else:
            mask = mask.expand(batch, -1, q_len, k_len)
            picked = torch.gather(mask, 2, order[:, None, :, None].expand(batch, mask.shape[1], width, k_len))
            if picked.dtype == torch.bool:
                scores = scores.masked_fill(~picked, float("-inf"))
            else:
                scores = scores + picked.float()
        probs = torch.softmax(scores, dim=-1).mean(dim=1)  # (B, A, K), heads averaged
        probs = torch.nan_to_num(probs) * valid[:, :, None]
        groups = self.groups.to(query.device, torch.float32)[:, :, :k_len]  # (B, G, K)
        mass = torch.einsum("bak,bgk->bg", probs, groups) / n_answer.clamp(min=1)[:, None]
        mass[n_answer == 0] = float("nan")
        self.mass[:, layer] = mass.cpu()
        self.seen[layer] = True


@contextmanager
def record_group_attention(
    model: nn.Module, answer_mask: torch.Tensor, group_masks: Mapping[str, torch.Tensor]
) -> Iterator[GroupAttentionRecord]:
    """Record per-layer, per-group attention mass of the answer tokens during the forward passes in the block.

    answer_mask (B, L) bool: the query rows (answer tokens); group_masks: name -> (B, L) bool key positions.
    The model's decoder must run with attn_implementation "sdpa".
    """
    global _active
    if _active:
        raise RuntimeError("record_group_attention is already active; it cannot be nested")
    modules = decoder_attention_modules(model)
    implementation = modules[0].config._attn_implementation
    if implementation != "sdpa":
        raise ValueError(f"the attention hook needs the decoder on 'sdpa' attention, it runs {implementation!r}")
    if answer_mask.ndim != 2 or any(mask.shape != answer_mask.shape for mask in group_masks.values()):
        raise ValueError("answer_mask and every group mask must share one (batch, length) shape")
    names = list(group_masks)
    groups = torch.stack([group_masks[name].bool() for name in names], dim=1)  # (B, G, L)
    record = GroupAttentionRecord(answer_mask.bool(), groups, names, len(modules))
    layer_of = {id(module): index for index, module in enumerate(modules)}

    def sdpa_with_group_mass(module, query, key, value, attention_mask, scaling=None, **kwargs):
        output = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        layer = layer_of.get(id(module))
        if layer is not None:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            with torch.no_grad():
                record.reduce(layer, query.detach(), key.detach(), attention_mask, scale)
        return output

    original = AttentionInterface._global_mapping["sdpa"]
    AttentionInterface.register("sdpa", sdpa_with_group_mass)
    _active = True
    try:
        yield record
    finally:
        AttentionInterface.register("sdpa", original)
        _active = False
    missing = [layer for layer, seen in enumerate(record.seen) if not seen]
    if missing:
        raise RuntimeError(f"the attention hook saw no call for decoder layer(s) {missing}")
