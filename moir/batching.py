"""Batches grouped by modality and length: less padding, same examples, seeded and resumable.

ScienceQA mixes text-only questions (about 130 tokens) with image questions (about 720: 576 visual tokens); a
random batch of 8 almost always holds both, and every text-only row is padded to the longest image row. LLaVA's
training groups batches by modality and length; so does `grouped_order`, for one epoch:

1. split the examples by modality (media kind: image, video, none) and shuffle each group with the epoch's RNG;
2. cut each shuffled group into megabatches of `batch_size * megabatch_factor` examples and sort each megabatch by
   length (longest first), so a batch holds examples of one modality and similar length while which examples
   meet is still random;
3. cut the megabatches into batches; the few examples left over from each modality (less than one batch each)
   are sorted by length and batched together at the end;
4. shuffle the full batches' order; a last partial batch, if any, stays last (the training loop reads the order
   in consecutive `batch_size` slices).

The order is a function of (lengths, kinds, batch_size, megabatch_factor, seed, epoch) alone, so a resumed run
recomputes it exactly (the training loop also saves it in its checkpoints). Evaluation needs no randomness:
`evaluation_order` sorts by modality and length. `padding_share` measures what a given order pads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def _check(lengths: Sequence[int], kinds: Sequence[str], batch_size: int) -> None:
    if len(lengths) != len(kinds):
        raise ValueError(f"{len(lengths)} lengths but {len(kinds)} kinds")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def grouped_order(lengths: Sequence[int], kinds: Sequence[str], batch_size: int, *, seed: int, epoch: int,
                  megabatch_factor: int = 16) -> list[int]:
    """A permutation of range(len(lengths)) whose consecutive `batch_size` slices are modality- and
    length-grouped batches (module docstring)."""
    _check(lengths, kinds, batch_size)
    if megabatch_factor < 1:
        raise ValueError(f"megabatch_factor must be >= 1, got {megabatch_factor}")
    rng = np.random.default_rng([seed, epoch])
    megabatch = batch_size * megabatch_factor
    full: list[list[int]] = []
    leftover: list[int] = []
    for kind in sorted(set(kinds)):
        group = rng.permutation([i for i, k in enumerate(kinds) if k == kind]).tolist()
        for start in range(0, len(group), megabatch):
            chunk = sorted(group[start:start + megabatch], key=lambda i: -lengths[i])  # stable: ties stay random
            for first in range(0, len(chunk), batch_size):
                batch = chunk[first:first + batch_size]
                (full.append(batch) if len(batch) == batch_size else leftover.extend(batch))
    leftover.sort(key=lambda i: -lengths[i])
    tail = [leftover[i:i + batch_size] for i in range(0, len(leftover), batch_size)]
    last = tail.pop() if tail and len(tail[-1]) < batch_size else None
    full.extend(tail)
    batches = [full[i] for i in rng.permutation(len(full))]
    if last is not None:
        batches.append(last)
    return [i for batch in batches for i in batch]


def random_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """A plain shuffled order (the baseline of the padding benchmark)."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def evaluation_order(lengths: Sequence[int], kinds: Sequence[str]) -> list[int]:
    """Indices sorted by modality, then length (longest first), then index: deterministic, least padding."""
    _check(lengths, kinds, 1)
    return sorted(range(len(lengths)), key=lambda i: (kinds[i], -lengths[i], i))


def batches_of(order: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def padding_share(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Padding tokens / all tokens computed when `order` is cut into batches padded to their longest row."""
    padded = real = 0
    for batch in batches_of(order, batch_size):
        batch_lengths = [lengths[i] for i in batch]
        padded += max(batch_lengths) * len(batch)
        real += sum(batch_lengths)
    return (padded - real) / padded if padded else 0.0


class GroupedBatchSampler:
    """`grouped_order` as a batch sampler (e.g. for a DataLoader's batch_sampler): `set_epoch(e)` picks the
    epoch, `skip(n)` resumes after the first n batches of it."""

    def __init__(self, lengths: Sequence[int], kinds: Sequence[str], batch_size: int, *, seed: int,
                 megabatch_factor: int = 16) -> None:
        _check(lengths, kinds, batch_size)
        self.lengths, self.kinds = list(lengths), list(kinds)
        self.batch_size, self.seed, self.megabatch_factor = batch_size, seed, megabatch_factor
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def skip(self, batches_done: int) -> None:
        self.start = batches_done

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = grouped_order(self.lengths, self.kinds, self.batch_size, seed=self.seed, epoch=self.epoch,
                              megabatch_factor=self.megabatch_factor)
        yield from batches_of(order, self.batch_size)[self.start:]
