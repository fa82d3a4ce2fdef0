"""The router (moir/router.py) against the paper's Eq. 1-3 and the decisions of docs/design.md section 1."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moir.router import MoIRRouter, RouterConfig, channel_scores, least_informative_channels

SETTINGS = settings(max_examples=25, deadline=None)


def svd_scores(matrix: torch.Tensor, rank: int | None, center: bool) -> torch.Tensor:
    """The literal Eq. 1 on one (tokens x D) matrix: sum over the top-r components of sigma_i^2 v_{i,d}^2."""
    x = matrix.double()
    if center:
        x = x - x.mean(0, keepdim=True)
    _, sigma, vh = torch.linalg.svd(x, full_matrices=False)
    r = len(sigma) if rank is None else min(rank, len(sigma))
    return (sigma[:r, None] ** 2 * vh[:r] ** 2).sum(0)


@st.composite
def token_batches(draw, max_batch=3, max_len=7, max_dim=9):
    batch = draw(st.integers(1, max_batch))
    length = draw(st.integers(1, max_len))
    dim = draw(st.integers(1, max_dim))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, dim, generator=generator) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    mask = torch.rand(batch, length, generator=generator) < 0.7
    mask[:, 0] = True  # every example keeps at least one valid token
    return tokens, mask


# ---------------------------------------------------------------------------------------------------- Eq. 1


@SETTINGS
@given(token_batches(), st.sampled_from([None, 1, 2, 5]), st.booleans())
def test_sample_scores_equal_svd_reference(batch, rank, center):
    tokens, mask = batch
    scores = channel_scores(tokens, mask, rank=rank, center=center, scope="sample")
    assert scores.shape == (tokens.shape[0], tokens.shape[2]) and scores.dtype == torch.float32
    for i in range(tokens.shape[0]):
        reference = svd_scores(tokens[i][mask[i]], rank, center)
        torch.testing.assert_close(scores[i].double(), reference, rtol=1e-4, atol=1e-4 * reference.max().item() + 1e-9)


@SETTINGS
@given(token_batches(), st.sampled_from([None, 1, 3]), st.booleans())
def test_batch_scores_equal_svd_reference(batch, rank, center):
    tokens, mask = batch
    scores = channel_scores(tokens, mask, rank=rank, center=center, scope="batch")
    assert scores.shape == (tokens.shape[2],)
    reference = svd_scores(tokens[mask], rank, center)
    torch.testing.assert_close(scores.double(), reference, rtol=1e-4, atol=1e-4 * reference.max().item() + 1e-9)


def test_full_rank_scores_are_channel_energy_and_float32_for_bfloat16():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert channel_scores(tokens, mask).tolist() == [[10.0, 5.0]]
    assert channel_scores(tokens.bfloat16(), mask).dtype == torch.float32


def test_scores_reject_bad_arguments():
    with pytest.raises(ValueError, match="scope"):
        channel_scores(torch.zeros(1, 2, 3), scope="tokens")
    with pytest.raises(ValueError, match="rank"):
        channel_scores(torch.zeros(1, 2, 3), rank=0)
    with pytest.raises(ValueError, match="mask"):
        channel_scores(torch.zeros(1, 2, 3), torch.ones(1, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------- Eq. 2


def test_least_informative_channels_ascending_with_ties_to_lower_index():
    scores = torch.tensor([[3.0, 1.0, 2.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert least_informative_channels(scores, 0.6).tolist() == [[4, 1, 3], [0, 1, 2]]
    assert least_informative_channels(scores, 0.0).shape == (2, 0)
    assert least_informative_channels(torch.arange(10.0), 0.25).tolist() == [0, 1]  # round(2.5) == 2


@pytest.mark.parametrize("ratio", [-0.01, 1.01, float("nan")])
def test_ratio_outside_unit_interval_raises(ratio):
    with pytest.raises(ValueError, match="ratio"):
        least_informative_channels(torch.zeros(4), ratio)


# ---------------------------------------------------------------------------------------------------- Eq. 3


def _inputs(seed=0, batch=3, len_a=6, len_b=4, dim=10, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    a = (torch.randn(batch, len_a, dim, generator=generator) * 5).to(dtype)
    b = (torch.randn(batch, len_b, dim, generator=generator) * 0.01).to(dtype)
    a_mask = torch.ones(batch, len_a, dtype=torch.bool)
    a_mask[0, -2:] = False
    b_mask = torch.ones(batch, len_b, dtype=torch.bool)
    b_mask[1, -1] = False
    return a, b, a_mask, b_mask


ALL_OPTIONS = [
    dict(align=align, scope=scope, rms_match=rms, rank=rank, center=center)
    for align in ("pool", "attend")
    for scope in ("sample", "batch")
    for rms in (True, False)
    for rank, center in ((None, False), (2, True))
]


@pytest.mark.parametrize("options", ALL_OPTIONS)
def test_ratio_zero_is_exact_identity(options):
    a, b, a_mask, b_mask = _inputs()
    a_out, b_out = MoIRRouter(a.shape[-1], 0.0, **options)(a, b, a_mask, b_mask)
    assert torch.equal(a_out, a) and torch.equal(b_out, b)


def test_equation_3_pool_by_hand():
    """Two channels, k = 1, pool alignment, no RMS matching: the literal Eq. 3 with alpha = 0.5."""
    a = torch.tensor([[[4.0, 0.1], [2.0, -0.1]]])  # energies (20, 0.02): channel 1 is routed into
    b = torch.tensor([[[0.0, 3.0], [8.0, 1.0]]])  # energies (64, 10): channel 1 is routed into
    router = MoIRRouter(2, 0.5, rms_match=False)  # k = round(0.5 * 2) = 1
    a_out, b_out = router(a, b)
    expected_a = torch.tensor([[[4.0, 0.5 * 2.0 + 0.5 * 0.1], [2.0, 0.5 * 2.0 - 0.5 * 0.1]]])  # mean of b = (4, 2)
    expected_b = torch.tensor([[[0.0, 0.5 * 0.0 + 0.5 * 3.0], [8.0, 0.5 * 0.0 + 0.5 * 1.0]]])  # mean of a = (3, 0)
    torch.testing.assert_close(a_out, expected_a)
    torch.testing.assert_close(b_out, expected_b)


@pytest.mark.parametrize("options", ALL_OPTIONS)
def test_unchosen_channels_and_masked_tokens_are_bit_for_bit_unchanged(options):
    a, b, a_mask, b_mask = _inputs()
    router = MoIRRouter(a.shape[-1], 0.3, **options)
    a_out, b_out = router(a, b, a_mask, b_mask)
    for out, inp, mask, src_mask in ((a_out, a, a_mask, b_mask), (b_out, b, b_mask, a_mask)):
        scope_scores = channel_scores(inp, mask, rank=options["rank"], center=options["center"], scope=options["scope"])
        chosen = least_informative_channels(scope_scores, 0.3).expand(inp.shape[0], -1)
        changed = out != inp  # (B, L, D)
        chosen_mask = torch.zeros(inp.shape[0], inp.shape[-1], dtype=torch.bool).scatter(1, chosen, True)
        assert not changed[~mask].any(), "a masked token changed"
        assert not (changed & ~chosen_mask[:, None, :]).any(), "an unchosen channel changed"
        assert changed.any()


def test_masked_text_tokens_have_no_influence_on_visual_output():
    a, b, a_mask, b_mask = _inputs()
    for align in ("pool", "attend"):
        router = MoIRRouter(a.shape[-1], 0.3, align=align)
        a_out, _ = router(a, b, a_mask, b_mask)
        b_changed = b.clone()
        b_changed[~b_mask] = 1e3  # only the masked tokens differ
        a_out_changed, _ = router(a, b_changed, a_mask, b_mask)
        assert torch.equal(a_out, a_out_changed)


@pytest.mark.parametrize("align", ["pool", "attend"])
def test_sample_scope_output_does_not_depend_on_batch_neighbours(align):
    a, b, a_mask, b_mask = _inputs(batch=3)
    router = MoIRRouter(a.shape[-1], 0.3, align=align, scope="sample")
    a_out, b_out = router(a, b, a_mask, b_mask)
    a_alone, b_alone = router(a[2:], b[2:], a_mask[2:], b_mask[2:])
    torch.testing.assert_close(a_out[2:], a_alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(b_out[2:], b_alone, rtol=0, atol=1e-6)
    a_other, _ = _inputs(seed=7, batch=3)[:2]
    a_mixed = torch.cat([a_other[:2], a[2:]])
    a_out_mixed, _ = router(a_mixed, b, a_mask, b_mask)
    torch.testing.assert_close(a_out_mixed[2:], a_out[2:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("align", ["pool", "attend"])
def test_gradients_reach_both_gates_and_both_inputs(align):
    a, b, a_mask, b_mask = _inputs()
    a.requires_grad_(True)
    b.requires_grad_(True)
    router = MoIRRouter(a.shape[-1], 0.3, align=align)
    a_out, b_out = router(a, b, a_mask, b_mask)
    (a_out.square().sum() + b_out.square().sum()).backward()
    for tensor in (router.logit_a, router.logit_b, a, b):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_directions_select_which_sequence_is_rewritten():
    a, b, a_mask, b_mask = _inputs()
    a_only = MoIRRouter(a.shape[-1], 0.3, directions="a")(a, b, a_mask, b_mask)
    b_only = MoIRRouter(a.shape[-1], 0.3, directions="b")(a, b, a_mask, b_mask)
    assert not torch.equal(a_only[0], a) and torch.equal(a_only[1], b)
    assert torch.equal(b_only[0], a) and not torch.equal(b_only[1], b)


def test_gates_start_at_gate_init_and_rms_match_rescales_the_source_to_the_destination_rms():
    router = MoIRRouter(10, 0.3, gate_init=0.25)
    torch.testing.assert_close(torch.sigmoid(router.logit_a), torch.full((10,), 0.25))
    a, b, a_mask, b_mask = _inputs()  # b is ~500x smaller than a
    router = MoIRRouter(10, 0.3, rms_match=True, directions="a")
    with torch.no_grad():
        router.logit_a.fill_(40.0)  # alpha = 1: the routed channels hold the (rescaled) source alone
    a_out, _ = router(a, b, a_mask, b_mask)
    chosen = least_informative_channels(channel_scores(a, a_mask), 0.3)
    for i in range(a.shape[0]):
        before = a[i][a_mask[i]][:, chosen[i]]
        after = a_out[i][a_mask[i]][:, chosen[i]]
        torch.testing.assert_close(after.square().mean().sqrt(), before.square().mean().sqrt(), rtol=1e-4, atol=0)


def test_bfloat16_keeps_dtype_and_matches_float32():
    a, b, a_mask, b_mask = _inputs()
    router = MoIRRouter(a.shape[-1], 0.3)
    a32, b32 = router(a, b, a_mask, b_mask)
    a16, b16 = router(a.bfloat16(), b.bfloat16(), a_mask, b_mask)
    assert a16.dtype == b16.dtype == torch.bfloat16
    torch.testing.assert_close(a16.float(), a32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kind", ["zeros", "constant", "single_token"])
@pytest.mark.parametrize("align", ["pool", "attend"])
def test_degenerate_inputs_give_finite_output_and_gradients(kind, align):
    if kind == "zeros":
        a, b = torch.zeros(2, 4, 8), torch.zeros(2, 3, 8)
    elif kind == "constant":
        a, b = torch.full((2, 4, 8), 3.0), torch.full((2, 3, 8), -2.0)
    else:
        a, b = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    a.requires_grad_(True)
    b.requires_grad_(True)
    router = MoIRRouter(8, 0.5, align=align, rank=None)
    a_out, b_out = router(a, b)
    (a_out.sum() + b_out.sum()).backward()
    for tensor in (a_out, b_out, a.grad, b.grad, router.logit_a.grad):
        assert torch.isfinite(tensor).all()


def test_source_without_valid_tokens_leaves_destination_unchanged():
    a, b, a_mask, b_mask = _inputs()
    b_mask[1] = False
    a_out, _ = MoIRRouter(a.shape[-1], 0.3)(a, b, a_mask, b_mask)
    assert torch.equal(a_out[1], a[1]) and not torch.equal(a_out[0], a[0])


@SETTINGS
@given(token_batches(), st.floats(0.0, 1.0), st.sampled_from(["pool", "attend"]))
def test_router_shapes_and_dtypes_for_any_batch(batch, ratio, align):
    a, a_mask = batch
    b = torch.randn(a.shape[0], 3, a.shape[-1])
    a_out, b_out = MoIRRouter(a.shape[-1], ratio, align=align)(a, b, a_mask, None)
    assert a_out.shape == a.shape and b_out.shape == b.shape
    assert torch.isfinite(a_out).all() and torch.isfinite(b_out).all()
    k = round(ratio * a.shape[-1])
    assert ((a_out != a).sum(-1) <= k).all()


def test_config_rejects_bad_values_with_the_field_name():
    for field, value in (("scope", "x"), ("align", "mean"), ("directions", "up"), ("gate_init", 1.0), ("rank", 0)):
        with pytest.raises(ValueError, match=f"router.{field}"):
            RouterConfig(**{field: value})
    with pytest.raises(ValueError, match="must be \\(B, L, 10\\)"):
        MoIRRouter(10)(torch.zeros(1, 2, 9), torch.zeros(1, 2, 10))
    assert math.isclose(MoIRRouter.from_config(4, RouterConfig(ratio=0.5)).ratio, 0.5)


# ------------------------------------------------------------------------------ batch independence and numerics

SAMPLE_SCOPE_OPTIONS = [
    dict(scope="sample", align=align, rms_match=rms, directions=directions, rank=rank, center=center)
    for align in ("pool", "attend")
    for rms in (True, False)
    for directions in ("both", "a", "b")
    for rank in (None, 2)
    for center in (False, True)
]


def _padded_batch(lengths_a=(5, 3, 6), lengths_b=(2, 4, 3), dim=10, seed=3):
    """Three examples of different lengths, right-padded with large junk values in the padding."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths_a)
    a = torch.full((batch, max(lengths_a), dim), 1e3)
    b = torch.full((batch, max(lengths_b), dim), -1e3)
    a_mask = torch.zeros(batch, max(lengths_a), dtype=torch.bool)
    b_mask = torch.zeros(batch, max(lengths_b), dtype=torch.bool)
    for i, (len_a, len_b) in enumerate(zip(lengths_a, lengths_b)):
        a[i, :len_a] = torch.randn(len_a, dim, generator=generator) * 5
        b[i, :len_b] = torch.randn(len_b, dim, generator=generator) * 0.01
        a_mask[i, :len_a] = True
        b_mask[i, :len_b] = True
    return a, b, a_mask, b_mask


@pytest.mark.parametrize("options", SAMPLE_SCOPE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_example_routed_alone_equals_it_routed_in_a_padded_batch(options):
    a, b, a_mask, b_mask = _padded_batch()
    router = MoIRRouter(a.shape[-1], 0.3, **options)
    with torch.no_grad():  # distinct gates, so that a wrong channel choice shows
        router.logit_a.copy_(torch.linspace(-2.0, 2.0, a.shape[-1]))
        router.logit_b.copy_(torch.linspace(1.5, -1.5, a.shape[-1]))
    a_out, b_out = router(a, b, a_mask, b_mask)
    for i in range(a.shape[0]):
        len_a, len_b = int(a_mask[i].sum()), int(b_mask[i].sum())
        a_alone, b_alone = router(a[i : i + 1, :len_a], b[i : i + 1, :len_b])  # no padding, no mask
        torch.testing.assert_close(a_out[i, :len_a], a_alone[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b_out[i, :len_b], b_alone[0], rtol=1e-5, atol=1e-6)


def test_attend_rms_match_ignores_padded_destination_rows():
    """The regression of the padded mean square: the padding rows of the destination used to enter the source's RMS."""
    a, b, a_mask, b_mask = _padded_batch()
    router = MoIRRouter(a.shape[-1], 0.3, align="attend", rms_match=True, directions="a")
    a_out, _ = router(a, b, a_mask, b_mask)
    more_padding = torch.cat([a, torch.full((a.shape[0], 4, a.shape[-1]), 7.0)], dim=1)
    more_mask = torch.cat([a_mask, torch.zeros(a.shape[0], 4, dtype=torch.bool)], dim=1)
    a_out_padded, _ = router(more_padding, b, more_mask, b_mask)
    torch.testing.assert_close(a_out_padded[:, : a.shape[1]][a_mask], a_out[a_mask], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("align", ["pool", "attend"])
@pytest.mark.parametrize("rank", [None, 2])
def test_training_autocast_routes_like_evaluation(align, rank):
    """Under CPU bf16 autocast (training) the router computes in float32 as in evaluation: bf16 inputs give the
    same output with and without autocast, and that output is the float32 route rounded to bf16."""
    a, b, a_mask, b_mask = _inputs(dtype=torch.bfloat16)
    router = MoIRRouter(a.shape[-1], 0.3, align=align, rank=rank)
    a_eval, b_eval = router(a, b, a_mask, b_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a_train, b_train = router(a, b, a_mask, b_mask)
    assert a_train.dtype == b_train.dtype == torch.bfloat16
    assert torch.equal(a_train, a_eval) and torch.equal(b_train, b_eval)
    a32, b32 = router(a.float(), b.float(), a_mask, b_mask)  # the float32 path on the same (bf16-exact) values
    assert torch.equal(a_train, a32.to(torch.bfloat16)) and torch.equal(b_train, b32.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 inputs stay float32 under autocast
        a32_autocast, _ = router(a.float(), b.float(), a_mask, b_mask)
    assert a32_autocast.dtype == torch.float32 and torch.equal(a32_autocast, a32)


def test_gate_statistics_name_the_channels_whose_gates_moved():
    router = MoIRRouter(6, RouterConfig(ratio=0.5, gate_init=0.3))
    stats = router.gate_statistics()
    assert stats["alpha_a_selected"] == 0 and stats["alpha_a_selected_mean"] == 0.3  # nothing trained yet
    assert stats["alpha_a_mean"] == pytest.approx(0.3)
    with torch.no_grad():
        router.logit_a[[1, 4]] = torch.tensor([0.0, 2.0])  # two channels trained (alpha 0.5 and sigmoid(2))
    stats = router.gate_statistics()
    assert stats["alpha_a_selected"] == 2 and stats["alpha_b_selected"] == 0
    assert stats["alpha_a_selected_mean"] == pytest.approx((0.5 + 1 / (1 + math.exp(-2.0))) / 2)
    assert stats["alpha_a_max"] == pytest.approx(1 / (1 + math.exp(-2.0)))


# ------------------------------------------------------------------------------ recording the chosen channels


@pytest.mark.parametrize("scope", ["sample", "batch"])
def test_recorded_channels_are_eq2_choices_of_the_routed_examples_and_recording_changes_nothing(scope):
    a, b, a_mask, b_mask = _padded_batch()
    b_mask[1] = False  # example 1 has no text: nothing is routed into its visual tokens, nor from them
    router = MoIRRouter(a.shape[-1], 0.3, scope=scope)
    assert router.chosen is None  # off by default
    plain = router(a, b, a_mask, b_mask)
    router.record_channels()
    recorded = router(a, b, a_mask, b_mask)
    assert all(torch.equal(x, y) for x, y in zip(plain, recorded))
    for name, dest, dest_mask in (("a", a, a_mask), ("b", b, b_mask)):
        (chosen,) = router.chosen[name]
        expected = least_informative_channels(channel_scores(dest, dest_mask, scope=scope), 0.3)
        expected = expected.expand(3, -1) if scope == "batch" else expected
        assert torch.equal(chosen, expected[[0, 2]])  # examples 0 and 2 are routed, in both directions
    router(a, b, a_mask, b_mask)
    assert len(router.chosen["a"]) == 2  # one entry per forward pass
    router.record_channels(False)
    assert router.chosen is None
    assert RouterConfig(gate_lr_scale=100).gate_lr_scale == 100
    with pytest.raises(ValueError, match="router.gate_lr_scale"):
        RouterConfig(gate_lr_scale=0)
