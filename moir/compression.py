"""Visual-token compression (FasterVLM-style): an importance score per visual token from the frozen vision encoder,
the top-k tokens per image (per frame of a video) kept in their original order, and the batch shortened to them.

Scores (one per language-model visual token; computed by `vlm.encode`, stored in the encoder cache with the
features, versioned by `SCORE_DEFINITION` in the encoder signature):
- LLaVA-1.5: the attention from [CLS] to each patch token at the CLIP layer LLaVA takes its features from
  (`vision_feature_layer`, -2: the attention inside the layer whose output is the feature), averaged over heads
  (`cls_attention`). SDPA returns no attention maps, so the layer's input is captured (`capture_inputs`) and the
  [CLS] query row is recomputed from the layer's own layer_norm1, q_proj, k_proj and scale.
- Qwen2.5-VL has no [CLS]: the mean attention each patch receives from the patches of its own frame (temporal
  patch group) at the last full-attention vision block, averaged over heads and queries (`received_attention`),
  then averaged over each 2x2 merge group: one score per merged (language-model) token.

Selection (`keep_mask`): keep ratio r in (0, 1]; k = max(1, round(r * n)) of the n tokens of each group (an
image; a frame of a video: every frame keeps tokens), ranked by score (ties: the earlier token), kept in their
original order. r = 1 keeps everything and the compressed model is the uncompressed one.

Applying it (`compress_batch`): the dropped tokens' placeholder positions are removed from every per-position
tensor of a batch (input_ids, attention_mask, labels, the masks, Qwen2.5-VL's M-RoPE position ids computed on the
full sequence), each row re-padded on its side, and the dropped tokens' rows removed from the media features: the
language model sees a shorter sequence; the router and the MDI/AEI analysis see the kept visual tokens only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

# Bumped whenever a score's definition changes: it is part of the encoder signature, so caches re-dump.
SCORE_DEFINITION = "cls-attn@feature-layer|received-attn@last-full-block/frame,merge-mean:v1"


def check_keep_ratio(ratio: float, name: str = "keep_ratio") -> float:
    """The ratio as a float in (0, 1]; ValueError naming `name` otherwise (0, > 1, NaN, not a number)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0 < ratio <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {ratio!r}")
    return float(ratio)


def keep_count(n: int, ratio: float) -> int:
    """k = max(1, round(ratio * n)) tokens kept of n (n >= 1)."""
    return max(1, round(check_keep_ratio(ratio) * n))


def keep_mask(scores: Tensor, group_sizes: Sequence[int], ratio: float) -> Tensor:
    """(n,) bool: the top-k tokens by score of each consecutive group (`group_sizes` sum to n), ties broken by
    position (a stable descending sort), so the kept tokens in their original order are `scores[mask]`."""
    if scores.ndim != 1 or sum(group_sizes) != scores.numel():
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not split into groups of {list(group_sizes)}")
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    start = 0
    for size in group_sizes:
        group = scores[start:start + size].detach().float().cpu()
        order = torch.sort(group, descending=True, stable=True).indices
        mask[start + order[:keep_count(size, ratio)]] = True
        start += size
    return mask


# ------------------------------------------------------------------------------------------------ scores


@contextmanager
def capture_inputs(module: nn.Module) -> Iterator[dict]:
    """{"args": ..., "kwargs": ...} of `module`'s last call in the block (a forward pre-hook)."""
    captured: dict = {}

    def hook(_module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def cls_attention(layer: nn.Module, hidden: Tensor) -> Tensor:
    """(B, L): the attention from token 0 ([CLS]) to every token of a CLIP encoder layer given its input `hidden`
    (B, L, D), averaged over heads; float32. The layer's own pre-norm, q/k projections and scale."""
    attention = layer.self_attn
    normed = layer.layer_norm1(hidden)
    batch, length, _ = normed.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    query = attention.q_proj(normed[:, :1]).float().view(batch, 1, heads, head_dim).transpose(1, 2)
    keys = attention.k_proj(normed).float().view(batch, length, heads, head_dim).transpose(1, 2)
    probs = torch.softmax(query @ keys.transpose(-1, -2) * attention.scale, dim=-1)  # (B, heads, 1, L)
    return probs.mean(1)[:, 0]


def segment_attention(query: Tensor, keys: Tensor, scaling: float) -> Tensor:
    """(heads, n, n) softmax(q k^T * scaling) of one segment; query/keys (n, heads, head_dim)."""
    return torch.softmax(query.transpose(0, 1).float() @ keys.transpose(0, 1).float().transpose(-1, -2) * scaling,
                         dim=-1)


def vision_block_qk(block: nn.Module, hidden: Tensor,
                    position_embeddings: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Qwen2.5-VL vision block: (query, keys), each (N, heads, head_dim), after the block's norm and rotary
    embedding, as its attention computes them."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    attention = block.attn
    normed = block.norm1(hidden)
    query, keys, _ = attention.qkv(normed).reshape(hidden.shape[0], 3, attention.num_heads, -1).permute(1, 0, 2, 3) \
        .unbind(0)
    cos, sin = position_embeddings
    return apply_rotary_pos_emb_vision(query, keys, cos, sin)


def received_attention(block: nn.Module, hidden: Tensor, cu_seqlens: Tensor,
                       position_embeddings: tuple[Tensor, Tensor], chunk: int = 1024) -> Tensor:
    """(N,) float32: for every patch of a Qwen2.5-VL full-attention block's input (N, D), the attention it
    receives from the patches of its own segment (`cu_seqlens`: a frame), averaged over heads and queries."""
    query, keys = vision_block_qk(block, hidden, position_embeddings)
    scaling = block.attn.scaling
    bounds = cu_seqlens.tolist()
    out = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start, end in zip(bounds[:-1], bounds[1:]):
        total = torch.zeros(end - start, dtype=torch.float32, device=hidden.device)
        for q_start in range(start, end, chunk):  # a (heads, chunk, n) slice of the map at a time
            q_end = min(q_start + chunk, end)
            total += segment_attention(query[q_start:q_end], keys[start:end], scaling).sum((0, 1))
        out[start:end] = total / (query.shape[1] * (end - start))
    return out


# ------------------------------------------------------------------------------------------------ the batch


def compress_batch(batch: dict[str, Tensor], keep: Tensor, *, left_pad: bool,
                   pad_values: dict[str, int | bool]) -> dict[str, Tensor]:
    """The batch with the positions where `keep` (B, L) is False (dropped visual tokens) removed.

    Every tensor whose last dimension is the sequence (the keys of `pad_values`, which give each one's padding
    value; position ids (3, B, L) included) is gathered to the kept valid positions of each row (attention_mask
    1 and keep), re-padded on the left (`left_pad`, generation) or the right; other entries are left as they are.
    """
    valid = keep & batch["attention_mask"].bool()
    counts = valid.sum(1)
    length = int(counts.max())
    rows = []
    for row in range(valid.shape[0]):
        index = valid[row].nonzero().squeeze(1)
        n_pad = length - index.numel()
        rows.append((index, n_pad))
    out = dict(batch)
    for key, pad in pad_values.items():
        if key not in batch:
            continue
        tensor = batch[key]
        shape = (*tensor.shape[:-2], valid.shape[0], length)
        new = torch.full(shape, pad, dtype=tensor.dtype, device=tensor.device)
        for row, (index, n_pad) in enumerate(rows):
            span = slice(n_pad, length) if left_pad else slice(0, length - n_pad)
            new[..., row, span] = tensor[..., row, index]
        out[key] = new
    return out
