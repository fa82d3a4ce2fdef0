"""MoIR: the Multi-modal Information Router (Section 3 of the paper).

Two token sequences meet before the language model fuses them:

    F_A  (B, L_A, D)   modality A: the visual (or video) tokens after the projector,
    F_B  (B, L_B, D)   modality B: the text-token embeddings of the prompt.

Each token's D dimensions are its *channels*. MoIR finds, for each modality, the channels that carry the least
information (Eq. 1, Eq. 2) and overwrites them with a gated mix of the other modality (Eq. 3), so that both
sequences enter the language model information-dense.

Eq. 1, channel informativeness. With the SVD X = U diag(sigma) V^T of the (tokens x D) matrix of one modality,

    S_d = sum_{i=1..r} sigma_i^2 * V_{d,i}^2 .

Summed over *all* components this is the diagonal of V diag(sigma^2) V^T = X^T X, i.e. S_d = sum_t x_{t,d}^2:
the per-channel energy, computed exactly in O(N D) with no SVD (`rank=None`, the default). Keeping only the
top-r components (`rank=r`) is computed exactly from the eigendecomposition of the smaller Gram matrix
(X X^T when there are fewer tokens than channels, X^T X otherwise).

Eq. 2, the bottom-k' channels. D_less = Bottom_k'(S): the k = round(k' * D) channels of lowest score
(Python's round), ties to the lower index. k' = 0 selects nothing and makes the router the identity.

Eq. 3, routing. On the chosen channels of A,

    F_A[:, :, D_less] <- alpha * F_B~[:, :, D_less] + (1 - alpha) * F_A[:, :, D_less],

with learnable per-channel gates alpha = sigmoid(logit), logit initialised so that alpha = gate_init (0.5 in
the paper). The same formulation routes A into B. The paper leaves open how a text sequence of length L_B feeds a
visual sequence of length L_A; F_B~ is B *aligned* to A's tokens:
  - `align="pool"`: the masked mean of B's valid tokens, the same source for every token of A;
  - `align="attend"`: for each token of A, the softmax(a b^T / sqrt(D)) mix of B's valid tokens
    (parameter-free similarity routing).
With `rms_match`, the source is rescaled to the destination's RMS on the routed channels: projected image
tokens and text embeddings differ in scale by orders of magnitude. Both mean squares are taken over the
destination's valid tokens (for "attend", the aligned source's rows are weighted by them too).

Decisions the paper leaves open (see docs/design.md, section 1): scores per example (`scope="sample"`) so that a
prediction never depends on which examples share its batch (`scope="batch"` is the paper's literal reshape of
all B*L_A tokens into one matrix); only valid tokens count (padding and, on the text side, anything but prompt
text is masked out by the caller); the router computes in float32 whatever the input dtype, with autocast
disabled, so that training under bf16 autocast and evaluation route with the same numerics. Channels not chosen
and tokens whose mask is False come out bit-for-bit unchanged, and with `scope="sample"` an example's output does
not depend on the other examples of its batch or on their padding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

Scope = Literal["sample", "batch"]
Align = Literal["pool", "attend"]
Directions = Literal["both", "a", "b"]

SCOPES = ("sample", "batch")
ALIGNS = ("pool", "attend")
DIRECTIONS = ("both", "a", "b")

# Mean squares are compared with this floor so that the RMS ratio stays finite (and differentiable) on all-zero input.
_MEAN_SQUARE_FLOOR = 1e-12
# Elements squared at a time when scoring channels: a block that stays in a CPU's cache.
_ENERGY_BLOCK_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------------------------------------------
# Eq. 1: channel informativeness scores
# --------------------------------------------------------------------------------------------------------------


def _valid_mask(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """(B, L) float32 weights: 1 where a token counts, 0 elsewhere."""
    batch, length, _ = tokens.shape
    if mask is None:
        return torch.ones(batch, length, dtype=torch.float32, device=tokens.device)
    if mask.shape != (batch, length):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (B, L) = {(batch, length)}")
    return mask.to(device=tokens.device, dtype=torch.float32)


def _channel_energy(x: Tensor, weights: Tensor) -> Tensor:
    """sum_t w_t x_{t,d}^2 for (B, L, D) float32 x and (B, L) weights -> (B, D), in one pass over x.

    Squares a block of tokens at a time so the temporary stays in cache (about 5x faster than squaring the whole
    tensor at LLaVA's training shapes).
    """
    batch, length, dim = x.shape
    block = max(1, _ENERGY_BLOCK_ELEMENTS // (batch * dim))
    energy = x.new_zeros(batch, 1, dim)
    for start in range(0, length, block):
        chunk = x[:, start : start + block]
        energy.baddbmm_(weights[:, None, start : start + block], chunk * chunk)
    return energy[:, 0]


def _top_r_energy(x: Tensor, rank: int) -> Tensor:
    """Eq. 1 with the top-`rank` singular components of each (N, D) matrix in the batch x (G, N, D) -> (G, D).

    Exact: the eigendecomposition of the smaller Gram matrix gives the same sigma_i^2 and V as the SVD.
      N <= D: X X^T = U diag(sigma^2) U^T and sigma_i V_{:,i} = X^T U_{:,i}, so S = sum_i (X^T U_{:,i})^2.
      N >  D: X^T X = V diag(sigma^2) V^T, so S = sum_i sigma_i^2 V_{:,i}^2.
    eigh returns eigenvalues in ascending order, so the top components are the last ones.
    """
    x = x.double()
    n_tokens, dim = x.shape[-2:]
    r = min(rank, n_tokens, dim)
    if n_tokens <= dim:
        _, u = torch.linalg.eigh(x @ x.transpose(-1, -2))
        components = x.transpose(-1, -2) @ u[..., -r:]  # (G, D, r): sigma_i * v_i
        energy = components.square().sum(-1)
    else:
        sigma_sq, v = torch.linalg.eigh(x.transpose(-1, -2) @ x)
        energy = (v[..., -r:].square() * sigma_sq[..., None, -r:].clamp_min(0)).sum(-1)
    return energy.float()


def channel_scores(
    tokens: Tensor,
    mask: Tensor | None = None,
    *,
    rank: int | None = None,
    center: bool = False,
    scope: Scope = "sample",
) -> Tensor:
    """Eq. 1: the informativeness S_d of every channel of a token sequence.

    tokens: (B, L, D). mask: (B, L) bool, True where a token counts (None: all tokens count).
    rank: None sums over all singular components (= per-channel sum of squares, no SVD); r keeps the top r.
    center: subtract the mean of the valid tokens first. scope: "sample" -> (B, D), one score vector per example
    over its own valid tokens; "batch" -> (D,), over all valid tokens of the batch (the paper's reshape).
    Returns float32 whatever the input dtype.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, L, D), got shape {tuple(tokens.shape)}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be None or a positive int, got {rank!r}")
    weights = _valid_mask(tokens, mask)[..., None]  # (B, L, 1)
    x = tokens.float()
    if center:
        reduce_dims = (1,) if scope == "sample" else (0, 1)
        count = weights.sum(reduce_dims, keepdim=True).clamp_min(1.0)
        mean = (x * weights).sum(reduce_dims, keepdim=True) / count
        x = x - mean
    if rank is None:
        per_sample = _channel_energy(x, weights[..., 0])
        return per_sample if scope == "sample" else per_sample.sum(0)
    x = x * weights  # masked tokens become zero rows: they add only zero singular values
    if scope == "batch":
        x = x.reshape(1, -1, x.shape[-1])
    scores = _top_r_energy(x, rank)
    return scores if scope == "sample" else scores[0]


# --------------------------------------------------------------------------------------------------------------
# Eq. 2: the bottom-k' channels
# --------------------------------------------------------------------------------------------------------------


def num_routed_channels(ratio: float, dim: int) -> int:
    """k = round(k' * D): how many channels Eq. 2 selects."""
    if not 0.0 <= ratio <= 1.0 or math.isnan(ratio):
        raise ValueError(f"ratio k' must lie in [0, 1], got {ratio!r}")
    return round(ratio * dim)


def least_informative_channels(scores: Tensor, ratio: float) -> Tensor:
    """Eq. 2: indices (..., k) of the k = round(ratio * D) lowest-scoring channels, in ascending order of score.

    Ties go to the lower channel index (a stable sort). A ratio outside [0, 1] raises ValueError.
    """
    k = num_routed_channels(ratio, scores.shape[-1])
    order = torch.sort(scores, dim=-1, stable=True).indices
    return order[..., :k]


# --------------------------------------------------------------------------------------------------------------
# Eq. 3: gated routing into the chosen channels
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterConfig:
    """Every option of the router, as config.yaml and the CLIs carry them."""

    ratio: float = 0.10
    rank: int | None = None
    center: bool = False
    scope: Scope = "sample"
    align: Align = "pool"
    rms_match: bool = True
    directions: Directions = "both"
    gate_init: float = 0.5
    gate_lr_scale: float = 1.0  # training only: the gates learn at lr * gate_lr_scale (moir.train); 1 = the paper

    def __post_init__(self) -> None:
        num_routed_channels(self.ratio, 1)  # validates the range
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"router.rank must be null or a positive integer, got {self.rank!r}")
        for name, allowed in (("scope", SCOPES), ("align", ALIGNS), ("directions", DIRECTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"router.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"router.gate_init must lie strictly between 0 and 1, got {self.gate_init!r}")
        if not self.gate_lr_scale > 0 or math.isinf(self.gate_lr_scale):
            raise ValueError(f"router.gate_lr_scale must be a positive number, got {self.gate_lr_scale!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _align_source(dest: Tensor, source: Tensor, source_weights: Tensor, channels: Tensor, align: Align) -> Tensor:
    """F_B~ restricted to the routed channels: the source modality aligned to each destination token.

    dest (B, Ld, D), source (B, Ls, D), source_weights (B, Ls) in {0, 1}, channels (B, k) -> (B, Ld or 1, k) float32.
    """
    source_channels = source.gather(-1, channels[:, None, :].expand(-1, source.shape[1], -1)).float()  # (B, Ls, k)
    if align == "pool":
        count = source_weights.sum(1).clamp_min(1.0)[:, None]
        return (torch.einsum("bl,blk->bk", source_weights, source_channels) / count)[:, None, :]
    similarity = dest.float() @ source.float().transpose(1, 2) / math.sqrt(dest.shape[-1])  # (B, Ld, Ls)
    similarity = similarity.masked_fill(source_weights[:, None, :] == 0, float("-inf"))
    weights = torch.softmax(similarity, dim=-1).nan_to_num(0.0)  # a source with no valid token gives zeros
    return weights @ source_channels


class _MixChannels(torch.autograd.Function):
    """Eq. 3 written into the chosen channels: out = dest with dest[..., c] <- alpha * src + (1 - alpha) * dest[..., c].

    A fused op so that forward and backward each touch the full-size tensor once (a copy), and only the k chosen
    channels otherwise; the autograd of gather + where + scatter would allocate and add several full-size
    gradients. dest (B, Ld, D); index (B, Ld, k) long; source (B, 1 or Ld, k) float32; alpha (B, 1, k) float32;
    keep (B, Ld, 1) bool: tokens that are routed (others keep their values bit-for-bit).
    """

    @staticmethod
    def forward(ctx, dest: Tensor, index: Tensor, source: Tensor, alpha: Tensor, keep: Tensor) -> Tensor:
        dest_channels = dest.gather(-1, index)
        mixed = alpha * source + (1.0 - alpha) * dest_channels.float()
        mixed = torch.where(keep, mixed.to(dest.dtype), dest_channels)
        ctx.save_for_backward(index, source, alpha, keep, dest_channels)
        return dest.scatter(-1, index, mixed)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        index, source, alpha, keep, dest_channels = ctx.saved_tensors
        grad_channels = grad_out.gather(-1, index).float()  # (B, Ld, k)
        grad_routed = grad_channels * keep
        grad_dest = grad_out.scatter(-1, index, (grad_channels - alpha * grad_routed).to(grad_out.dtype))
        grad_source = (grad_routed * alpha).sum(1, keepdim=True) if source.shape[1] == 1 else grad_routed * alpha
        grad_alpha = (grad_routed * (source - dest_channels.float())).sum(1, keepdim=True)
        return grad_dest, None, grad_source, grad_alpha, None


def route(
    dest: Tensor,
    source: Tensor,
    dest_mask: Tensor | None,
    source_mask: Tensor | None,
    gate_logit: Tensor,
    config: RouterConfig,
    chosen: list[Tensor] | None = None,
) -> Tensor:
    """Eq. 1-3 for one direction: route `source` into the least informative channels of `dest`.

    dest (B, Ld, D), source (B, Ls, D), masks (B, L) bool or None, gate_logit (D,). Returns a tensor shaped and
    typed like `dest`; unchosen channels, masked tokens and examples whose source has no valid token are unchanged.
    With `rms_match` the destination's RMS is a reference scale and is not differentiated through.
    `chosen`: when a list is given, the (n, k) channels chosen for each example that is routed (it has a valid
    destination token and a valid source token) are appended to it.
    """
    batch, dest_len, dim = dest.shape
    with torch.no_grad():
        scores = channel_scores(dest, dest_mask, rank=config.rank, center=config.center, scope=config.scope)
        channels = least_informative_channels(scores, config.ratio)  # Eq. 2: (B, k) or (k,)
    if channels.shape[-1] == 0:
        return dest
    if channels.ndim == 1:
        channels = channels.expand(batch, -1)
    dest_weights = _valid_mask(dest, dest_mask)
    source_weights = _valid_mask(source, source_mask)
    if chosen is not None:
        chosen.append(channels[(dest_weights.sum(1) > 0) & (source_weights.sum(1) > 0)].detach().cpu())
    index = channels[:, None, :].expand(-1, dest_len, -1)  # (B, Ld, k)

    routed_source = _align_source(dest, source, source_weights, channels, config.align)  # (B, Ld or 1, k)
    if config.rms_match:
        # Both mean squares run over the destination's valid tokens only: with align="attend" the source has one
        # row per destination token, and a padded row must not move the scale (a prediction would then depend on
        # how much padding its batch neighbours force on it).
        dest_count = dest_weights.sum(1).clamp_min(1.0) * channels.shape[-1]  # (B,)
        with torch.no_grad():
            dest_channels = dest.gather(-1, index).float()
            dest_mean_square = torch.einsum("bl,blk->b", dest_weights, dest_channels.square()) / dest_count
        if routed_source.shape[1] == 1:  # pool: one row shared by every destination token
            source_mean_square = routed_source.square().mean(dim=(1, 2))
        else:  # attend: one row per destination token, weighted by the valid ones
            source_mean_square = torch.einsum("bl,blk->b", dest_weights, routed_source.square()) / dest_count
        scale = ((dest_mean_square + _MEAN_SQUARE_FLOOR) / (source_mean_square + _MEAN_SQUARE_FLOOR)).sqrt()
        routed_source = routed_source * scale[:, None, None]

    alpha = torch.sigmoid(gate_logit.float())[channels][:, None, :]  # (B, 1, k): the gates of the chosen channels
    has_source = source_weights.sum(1) > 0  # (B,)
    keep = ((dest_weights > 0) & has_source[:, None])[..., None]  # (B, Ld, 1)
    return _MixChannels.apply(dest, index, routed_source, alpha, keep)  # Eq. 3


class MoIRRouter(nn.Module):
    """The Multi-modal Information Router: Eq. 1-3 in both directions, with learnable per-channel gates.

    a: (B, L_A, D) visual/video tokens, b: (B, L_B, D) text embeddings, each with an optional (B, L) bool mask.
    `logit_a` gates what is routed into `a` (from `b`), `logit_b` what is routed into `b` (from `a`);
    alpha = sigmoid(logit). Scores are computed from the inputs as given, so both directions see the
    unrouted sequences. `directions` chooses which sequences are rewritten ("both", "a" or "b").
    """

    def __init__(self, dim: int, config: RouterConfig | float | None = None, **options) -> None:
        """`MoIRRouter(dim, RouterConfig(...))`; `MoIRRouter(dim, ratio, **options)` builds the RouterConfig (whose
        defaults are the router's only ones)."""
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(config, RouterConfig):
            config = RouterConfig(**({} if config is None else {"ratio": config}), **options)
        elif options:
            raise TypeError(f"MoIRRouter: options {sorted(options)} given beside a RouterConfig")
        self.dim = dim
        self.config = config
        initial_logit = math.log(config.gate_init / (1.0 - config.gate_init))
        self.logit_a = nn.Parameter(torch.full((dim,), initial_logit))
        self.logit_b = nn.Parameter(torch.full((dim,), initial_logit))
        self.chosen: dict[str, list[Tensor]] | None = None  # `record_channels`: off by default

    def record_channels(self, on: bool = True) -> None:
        """Keep the channels each forward pass chooses, per direction, in `self.chosen` ({"a": [...], "b": [...]},
        one (n, k) tensor per pass, n the examples routed); `record_channels(False)` stops and drops them."""
        self.chosen = {"a": [], "b": []} if on else None

    @classmethod
    def from_config(cls, dim: int, config: RouterConfig) -> MoIRRouter:
        return cls(dim, config)

    @property
    def ratio(self) -> float:
        return self.config.ratio

    def forward(
        self, a: Tensor, b: Tensor, a_mask: Tensor | None = None, b_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        for name, tokens in (("a", a), ("b", b)):
            if tokens.ndim != 3 or tokens.shape[-1] != self.dim:
                raise ValueError(f"{name} must be (B, L, {self.dim}), got shape {tuple(tokens.shape)}")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must share the batch size, got {a.shape[0]} and {b.shape[0]}")
        route_a = self.config.directions in ("both", "a")
        route_b = self.config.directions in ("both", "b")
        # The router runs in float32 with autocast disabled, in training (under bf16 autocast) as in evaluation, so
        # that both route with the same numerics; the outputs are cast back to the input dtypes. The float32 copy
        # is exact, so unchosen channels and masked tokens still come out bit-for-bit unchanged.
        with torch.autocast(device_type=a.device.type, enabled=False):
            a32, b32 = a.float(), b.float()
            chosen = self.chosen or {}
            a_out = (route(a32, b32, a_mask, b_mask, self.logit_a, self.config, chosen.get("a")).to(a.dtype)
                     if route_a else a)
            b_out = (route(b32, a32, b_mask, a_mask, self.logit_b, self.config, chosen.get("b")).to(b.dtype)
                     if route_b else b)
        return a_out, b_out

    @torch.no_grad()
    def gate_statistics(self) -> dict[str, float]:
        """Mean/min/max of both gates' alpha, for the training log; `alpha_<a|b>_selected` counts the channels
        whose gate has left its initial value (those the bottom-k' selection routed through: a gate of a channel
        never selected gets no gradient) and `alpha_<a|b>_selected_mean` is their mean alpha (gate_init if none)."""
        stats = {}
        initial_logit = math.log(self.config.gate_init / (1.0 - self.config.gate_init))
        for name, logit in (("a", self.logit_a), ("b", self.logit_b)):
            alpha = torch.sigmoid(logit.float())
            stats.update({f"alpha_{name}_mean": alpha.mean().item(), f"alpha_{name}_min": alpha.min().item(),
                          f"alpha_{name}_max": alpha.max().item()})
            selected = logit.detach() != torch.tensor(initial_logit, dtype=logit.dtype, device=logit.device)
            stats[f"alpha_{name}_selected"] = int(selected.sum().item())
            stats[f"alpha_{name}_selected_mean"] = (alpha[selected].mean().item() if bool(selected.any())
                                                    else self.config.gate_init)
        return stats

    def extra_repr(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.config.to_dict().items())
        return f"dim={self.dim}, {options}"
