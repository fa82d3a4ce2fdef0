"""Modality- and length-grouped batches: a permutation, one modality per batch, less padding, a pure function of
(seed, epoch); and in the training loop: grouped epochs, bit-for-bit resume after an interruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import image

from moir.batching import (
    GroupedBatchSampler,
    batches_of,
    evaluation_order,
    grouped_order,
    padding_share,
    random_order,
)
from moir.models import Example, load_vlm
from moir.train.finetune import trainable_parameters
from moir.train.loop import LoopConfig, TrainingError, filter_and_measure, run_training


def scienceqa_like(n=400, seed=0):
    rng = np.random.default_rng(seed)
    text_only = rng.random(n) < 0.51
    lengths = np.where(text_only, rng.integers(80, 180, n), rng.integers(650, 790, n)).tolist()
    return lengths, ["none" if t else "image" for t in text_only]


def test_grouped_order_is_a_seeded_permutation_of_single_modality_batches():
    lengths, kinds = scienceqa_like()
    order = grouped_order(lengths, kinds, 8, seed=0, epoch=1)
    assert sorted(order) == list(range(len(lengths)))
    assert order == grouped_order(lengths, kinds, 8, seed=0, epoch=1)
    assert order != grouped_order(lengths, kinds, 8, seed=0, epoch=2)
    assert order != grouped_order(lengths, kinds, 8, seed=1, epoch=1)
    batches = batches_of(order, 8)
    assert all(len(b) == 8 for b in batches[:-1])
    mixed = [b for b in batches if len({kinds[i] for i in b}) > 1]
    assert len(mixed) <= 1  # only the batch of both modalities' leftovers may mix
    assert padding_share(lengths, order, 8) < 0.1 < padding_share(lengths, random_order(400, seed=0, epoch=1), 8)
    assert padding_share(lengths, evaluation_order(lengths, kinds), 8) <= padding_share(lengths, order, 8)


def test_padding_share_counts_tokens():
    assert padding_share([1, 3, 2, 2], [0, 1, 2, 3], 2) == pytest.approx((2 + 0) / (6 + 4))


def test_sampler_resumes_where_it_stopped():
    lengths, kinds = scienceqa_like(100)
    sampler = GroupedBatchSampler(lengths, kinds, 8, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip(5)
    assert list(sampler) == full[5:]
    assert len(sampler) == len(full) == 13


# ------------------------------------------------------------------------------------------ in the training loop


@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    return tiny_dirs["tiny-llava"]


def examples() -> list[Example]:
    out = []
    for i in range(12):
        if i % 3:
            out.append(Example(f"i{i}", "What colour is the star?" + " Look." * (i % 4), "red", "image",
                               pixels=image(i)))
        else:
            out.append(Example(f"t{i}", "Is the sky blue?" + " Think." * i, "yes", "none"))
    return out


class Interrupt(Exception):
    pass


def train(tiny, checkpoint_dir, stop_at=None):
    vlm = load_vlm(tiny)
    train_set, dropped, lengths, kinds = filter_and_measure(vlm, examples(), max_length=2048)
    assert not dropped and len(lengths) == 12
    torch.manual_seed(0)
    vlm.apply_lora("attn", r=4, alpha=8, dropout=0.0)
    parameters = trainable_parameters(vlm)
    config = LoopConfig(epochs=2, batch_size=4, lr=1e-3, checkpoint_every=1, group_by_length=True)
    orders = []

    def statistics():
        if stop_at is not None and len(orders) == stop_at:
            raise Interrupt
        orders.append(1)
        return {}

    result = run_training(vlm, parameters, train_set, [], config, fingerprint={"test": 1},
                          checkpoint_dir=checkpoint_dir, device=torch.device("cpu"), step_statistics=statistics,
                          lengths=lengths, kinds=kinds)
    return {name: p.detach().clone() for name, p in parameters.items()}, result, kinds


def test_grouped_training_resumes_bit_for_bit(tiny, tmp_path):
    reference, result, kinds = train(tiny, tmp_path / "a")
    assert [r["examples"] for r in result.records if r["kind"] == "step"] == [4, 4, 4] * 2
    with pytest.raises(Interrupt):
        train(tiny, tmp_path / "b", stop_at=4)  # killed in the second epoch, after the checkpoint of step 4
    resumed, resumed_result, _ = train(tiny, tmp_path / "b")
    assert resumed_result.records[-1]["step"] == 6
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name
    assert LoopConfig(group_by_length=True).fingerprint()["group_by_length"] is True
    assert "group_by_length" not in LoopConfig().fingerprint()


def test_group_by_length_needs_lengths(tiny, tmp_path):
    vlm = load_vlm(tiny)
    with pytest.raises(TrainingError, match="group_by_length needs"):
        run_training(vlm, {}, examples(), [], LoopConfig(group_by_length=True), fingerprint={},
                     checkpoint_dir=None, device=torch.device("cpu"))
