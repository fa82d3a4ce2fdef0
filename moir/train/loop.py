"""The training loop shared by `moir.train` (LoRA runs, with or without MoIR) and `moir.train.pretrain` (the demo bases).

One loop, resumable and exact: a run killed at any point and started again with the same arguments ends with
bit-for-bit the weights of an uninterrupted run (same machine, CPU). That holds because everything the remaining
computation depends on is in the checkpoint:

- the trained parameters (LoRA + router gates, or every weight when pretraining), the AdamW state and the
  ReduceLROnPlateau state;
- the RNG states (python, numpy, torch CPU and CUDA): dropout draws continue where they stopped;
- the position in the data: the epoch, the optimizer steps done in it, and the epoch's shuffled order.

Checkpoints are single files `step-<global step>.pt` written to a temporary name and renamed (a kill mid-write
leaves the previous checkpoint intact); they are taken every `checkpoint_every` optimizer steps and at every
epoch end (after the validation loss and the scheduler step), and only the newest is kept. Each has a sidecar
`step-<global step>.pt.sha256` holding the sha256 of its bytes, written before the checkpoint is renamed into
place and checked before it is loaded: flipped bytes (a bad disk, a careless copy) are refused naming the file,
never resumed from. A checkpoint carries the run's fingerprint (every setting that changes the result, the data
and cache fingerprints); resuming from a checkpoint of a different run is an error naming every differing field
(e.g. `loop.seed`), never a silent mix.

One optimizer step sees `batch_size` examples, split into `grad_accum` micro-batches whose losses are weighted
by their share of the batch's target tokens, so accumulation gives the same objective as one large batch: the
mean cross-entropy over the batch's answer tokens. The validation loss is the same token-weighted mean over the
whole validation split, and drives ReduceLROnPlateau at each epoch end (no plateau without a validation split).
Without one, `lr_schedule` ("cosine", "linear"; "constant" by default) and `warmup_steps` set each step's rate to
`lr * lr_factor(step, ...)` (pretraining); a run with a validation split must keep the constant rate.

A non-finite loss or gradient norm stops the run with `NonFiniteLossError` naming the step; nothing is written
for that step, so the last good checkpoint stays the newest.

Which weights a run returns (`keep`): "last", the parameters after the last epoch (the default: the paper does not
say, and this is its literal reading), or "best", those of the epoch with the lowest validation loss (the first
of equals), kept in memory and in every checkpoint from then on. Either way the result names the best epoch and
its validation loss.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from moir import runtime

from moir.batching import grouped_order
from moir.storage import atomic_path, file_sha256, write_text_atomic

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_SUFFIX = ".pt"
KEEP = ("last", "best")
LR_SCHEDULES = ("constant", "cosine", "linear")
CHECKSUM_SUFFIX = ".sha256"


class TrainingError(RuntimeError):
    """A run cannot start or cannot go on; the message says why (and which file, field or step)."""


class NonFiniteLossError(TrainingError):
    """The loss or the gradient norm became NaN or infinite; the message names the step."""


@dataclass(frozen=True)
class LoopConfig:
    """The optimisation settings of one run. Defaults are the paper's (Section 4.1, "Hyperparameter Details").

    `checkpoint_every` (optimizer steps; 0 = only at epoch ends) does not change the result, so it is not part
    of the run's fingerprint.
    """

    epochs: int = 10
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    max_length: int = 2048
    seed: int = 0
    checkpoint_every: int = 200
    group_by_length: bool = False  # batches grouped by modality and length (moir.batching); needs `lengths`
    keep: str = "last"  # which weights the run returns: "last" (after the last epoch) or "best" (lowest val loss)
    lr_schedule: str = "constant"  # per-step factor on lr (`lr_factor`); not with a validation split's plateau
    warmup_steps: int = 0  # linear warm-up from lr / (warmup_steps + 1) to lr over the first steps

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("grad_accum", self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
             f"a positive divisor of batch_size ({self.batch_size})"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive finite number"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            ("max_grad_norm", math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
             "a finite number >= 0 (0 turns clipping off)"),
            ("plateau_factor", 0 < self.plateau_factor < 1, "a number strictly between 0 and 1"),
            ("plateau_patience", self.plateau_patience >= 0, "an integer >= 0"),
            ("max_length", self.max_length >= 1, "a positive integer"),
            ("seed", self.seed >= 0, "an integer >= 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, "an integer >= 0 (0 = only at epoch ends)"),
            ("keep", self.keep in KEEP, f"one of {', '.join(KEEP)}"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"one of {', '.join(LR_SCHEDULES)}"),
            ("warmup_steps", self.warmup_steps >= 0, "an integer >= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the trained weights."""
        settings = dataclasses.asdict(self)
        del settings["checkpoint_every"]
        if not self.group_by_length:  # the fingerprint of a random-order run is what it was before the option
            del settings["group_by_length"]
        if self.keep == "last":  # likewise: a run that keeps its last weights is what it was before the option
            del settings["keep"]
        if self.lr_schedule == "constant" and self.warmup_steps == 0:  # likewise: a constant-rate run
            del settings["lr_schedule"], settings["warmup_steps"]
        return settings


@dataclass
class LoopState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0  # epochs fully done (validation and scheduler step included)
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    order: list[int] | None = None  # the current epoch's shuffled example order
    records: list[dict] = field(default_factory=list)  # train_metrics.jsonl so far
    train_time_s: float = 0.0  # wall time spent in the loop, over all sessions, up to this state
    resumed_from: list[int] = field(default_factory=list)  # global steps this run was resumed at
    best_epoch: int | None = None  # the epoch (1-based) of the lowest validation loss so far, and that loss
    best_val_loss: float | None = None


@dataclass
class LoopResult:
    records: list[dict]
    global_step: int
    train_time_s: float
    resumed_from: list[int]
    val_losses: list[float]
    best_epoch: int | None = None  # lowest validation loss (first of equals); None without a validation split
    best_val_loss: float | None = None
    kept_epoch: int | None = None  # the epoch whose weights `parameters` hold on return (keep: last or best)


# ----------------------------------------------------------------------------------------------------------------
# Seeds, RNG states, data order
# ----------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a function of (seed, epoch) alone, not of any global RNG."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_path(checkpoint_dir: Path, global_step: int) -> Path:
    return checkpoint_dir / f"{CHECKPOINT_PREFIX}{global_step:08d}{CHECKPOINT_SUFFIX}"


def latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    """The newest complete checkpoint in `checkpoint_dir` (temporary files of a killed write are ignored)."""
    if checkpoint_dir is None or not checkpoint_dir.is_dir():
        return None
    found = sorted(
        path for path in checkpoint_dir.iterdir()
        if path.name.startswith(CHECKPOINT_PREFIX) and path.name.endswith(CHECKPOINT_SUFFIX)
    )
    return found[-1] if found else None


def checksum_path(checkpoint: Path) -> Path:
    """The sidecar holding a checkpoint's sha256."""
    return checkpoint.with_name(checkpoint.name + CHECKSUM_SUFFIX)


def _save_checkpoint(checkpoint_dir: Path, payload: dict) -> Path:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(checkpoint_dir, payload["state"]["global_step"])
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            # the sidecar first: a kill between the two renames leaves a sidecar without its checkpoint, never the reverse
            write_text_atomic(checksum_path(path), f"{file_sha256(tmp)}  {path.name}\n")
    except OSError as error:
        raise TrainingError(f"{path}: cannot write the checkpoint ({error.strerror or error})") from error
    keep = {path, checksum_path(path)}
    for old in checkpoint_dir.iterdir():  # older checkpoints, their sidecars and temporary files of killed writes
        if old not in keep and old.name.startswith((CHECKPOINT_PREFIX, f".{CHECKPOINT_PREFIX}")):
            old.unlink(missing_ok=True)
    return path


def verify_checkpoint(path: Path) -> None:
    """Raise TrainingError naming the file when a checkpoint's bytes do not match the sha256 in its sidecar."""
    sidecar = checksum_path(path)
    try:
        recorded = sidecar.read_text().split()[0]
    except (OSError, IndexError) as error:
        raise TrainingError(
            f"{path}: no recorded checksum ({sidecar} missing or empty); delete {path.parent} to start the run afresh"
        ) from error
    actual = file_sha256(path)
    if actual != recorded:
        raise TrainingError(
            f"{path}: corrupt checkpoint: sha256 {actual}, {sidecar.name} records {recorded}; delete {path.parent} "
            "to start the run afresh"
        )


def remove_checkpoints(checkpoint_dir: Path) -> None:
    """Delete this loop's checkpoint files (and the directory when that leaves it empty); nothing else."""
    if not checkpoint_dir.is_dir():
        return
    for path in checkpoint_dir.iterdir():
        if path.name.startswith((CHECKPOINT_PREFIX, f".{CHECKPOINT_PREFIX}")):
            path.unlink()
    if not any(checkpoint_dir.iterdir()):
        checkpoint_dir.rmdir()


def fingerprint_differences(saved: Any, expected: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields in which two fingerprints differ, with both values ("loop.seed: 0 vs 1")."""
    if isinstance(saved, Mapping) and isinstance(expected, Mapping):
        differences = []
        for key in sorted(set(saved) | set(expected), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                differences.append(f"{name}: missing from the checkpoint")
            elif key not in expected:
                differences.append(f"{name}: missing from this run's settings")
            else:
                differences.extend(fingerprint_differences(saved[key], expected[key], name))
        return differences
    if _canonical(saved) != _canonical(expected):
        return [f"{prefix or 'fingerprint'}: checkpoint {_short(saved)}, this run {_short(expected)}"]
    return []


def _short(value: Any) -> str:
    text = _canonical(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _load_checkpoint(path: Path, fingerprint: Mapping[str, Any]) -> dict:
    verify_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise TrainingError(
            f"{path}: not a readable checkpoint ({error}); delete it to start the run afresh"
        ) from error
    saved = payload.get("fingerprint", {}) if isinstance(payload, Mapping) else None
    if not isinstance(saved, Mapping):
        raise TrainingError(
            f"{path}: not a checkpoint of this loop (no 'fingerprint' field); delete it to start afresh"
        )
    if _canonical(saved) != _canonical(fingerprint):
        differences = fingerprint_differences(saved, fingerprint)
        raise TrainingError(
            f"{path}: this checkpoint belongs to a different run (settings or data differ in: "
            f"{'; '.join(differences)}); delete {path.parent} to start this run afresh"
        )
    return payload


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


def count_targets(labels: torch.Tensor) -> int:
    """Target tokens of a causal-LM batch: labels are shifted by one, so the first position never counts."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def filter_by_length(vlm, examples: Sequence, max_length: int, chunk_size: int = 64) -> tuple[Sequence, list[str]]:
    """Drop the examples whose full sequence (media tokens, prompt, answer) exceeds `max_length` tokens.

    Truncating such a sequence would cut visual tokens or the answer, so they are dropped and named instead.
    Lengths come from collating `chunk_size` examples at a time (one pass over the data, before training).
    Returns (the kept examples as a lazy view of `examples`, ids of the dropped ones).
    """
    kept, dropped, _, _ = filter_and_measure(vlm, examples, max_length, chunk_size)
    return kept, dropped


def filter_and_measure(vlm, examples: Sequence, max_length: int,
                       chunk_size: int = 64) -> tuple[Sequence, list[str], list[int], list[str]]:
    """`filter_by_length`, also returning the kept examples' lengths and media kinds (run_training's `lengths`
    and `kinds` for batches grouped by length), from the same single pass."""
    kept, dropped, kept_lengths, kept_kinds = [], [], [], []
    for start in range(0, len(examples), chunk_size):
        chunk = [examples[i] for i in range(start, min(start + chunk_size, len(examples)))]
        lengths = vlm.collate(chunk, with_answer=True)["attention_mask"].sum(1).tolist()
        for offset, (example, length) in enumerate(zip(chunk, lengths, strict=True)):
            if length <= max_length:
                kept.append(start + offset)
                kept_lengths.append(int(length))
                kept_kinds.append(example.media_kind)
            else:
                dropped.append(example.id)
    return Subset(examples, kept), dropped, kept_lengths, kept_kinds


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def optimizer_step(
    vlm,
    examples: Sequence,
    micro_batch_size: int,
    optimizer: torch.optim.Optimizer,
    parameters: Sequence[nn.Parameter],
    max_grad_norm: float,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, float, int]:
    """One optimizer step on `examples` (one batch), in micro-batches: collate, forward, backward, clip, update.

    Each micro-batch's mean loss is weighted by its share of the batch's target tokens, so the gradient is that of
    the mean over all the batch's answer tokens whatever the split. Returns (loss, gradient norm before clipping,
    tokens). Raises NonFiniteLossError before the update when the loss or the gradient norm is not finite.
    """
    batches = [
        vlm.collate(list(examples[start:start + micro_batch_size]), with_answer=True)
        for start in range(0, len(examples), micro_batch_size)
    ]
    batch_targets = max(sum(count_targets(batch["labels"]) for batch in batches), 1)
    optimizer.zero_grad(set_to_none=True)
    total_loss, tokens = 0.0, 0
    for batch in batches:
        tokens += int(batch["attention_mask"].sum())
        with _autocast(device, autocast_dtype):
            loss = vlm.forward(batch).loss * (count_targets(batch["labels"]) / batch_targets)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss ({loss.item()})")
        loss.backward()
        total_loss += loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm if max_grad_norm > 0 else math.inf))
    if not math.isfinite(grad_norm):
        raise NonFiniteLossError(f"non-finite gradient norm ({grad_norm})")
    optimizer.step()
    return total_loss, grad_norm, tokens


def validation_loss(vlm, examples: Sequence, micro_batch_size: int, device: torch.device,
                    autocast_dtype: torch.dtype | None) -> float:
    """Mean cross-entropy over all answer tokens of `examples` (eval mode, no dropout, no gradient)."""
    model = vlm.model
    was_training = model.training
    model.eval()
    total_loss, total_targets = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro_batch_size):
            chunk = range(start, min(start + micro_batch_size, len(examples)))
            batch = vlm.collate([examples[i] for i in chunk], with_answer=True)
            targets = count_targets(batch["labels"])
            with _autocast(device, autocast_dtype):
                loss = vlm.forward(batch).loss
            total_loss += float(loss) * targets
            total_targets += targets
    model.train(was_training)
    return total_loss / max(total_targets, 1)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """The factor on the learning rate of optimizer step `step` (0-based) of `total_steps`.

    Warm-up: step s < warmup_steps runs at (s + 1) / (warmup_steps + 1). Then, over the remaining
    n = total_steps - warmup_steps steps, with t = (step - warmup_steps) / n in [0, 1):
    "constant" 1, "linear" 1 - t, "cosine" (1 + cos(pi t)) / 2; the last step runs at 1/n of the peak (linear),
    about (pi / 2n)^2 (cosine), never at exactly 0.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}), got {step}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    return 1.0 - t if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))


def parameter_groups(parameters: Mapping[str, nn.Parameter], lr: float,
                     lr_scales: Mapping[str, float]) -> list[dict]:
    """AdamW parameter groups: the parameters at `lr` first (the group whose lr the step records report), then
    one group per factor of `lr_scales` (name -> factor) at `lr * factor`."""
    unknown = sorted(set(lr_scales) - set(parameters))
    if unknown:
        raise TrainingError(f"lr_scales names parameters that are not trained: {unknown[:5]}")
    groups = [{"params": [p for name, p in parameters.items() if name not in lr_scales], "lr": lr}]
    for factor in sorted(set(lr_scales.values())):
        groups.append({"params": [p for name, p in parameters.items() if lr_scales.get(name) == factor],
                       "lr": lr * factor})
    return [group for group in groups if group["params"]]


def run_training(
    vlm,
    parameters: Mapping[str, nn.Parameter],
    train_examples: Sequence,
    val_examples: Sequence,
    config: LoopConfig,
    *,
    fingerprint: Mapping[str, Any],
    checkpoint_dir: Path | None,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    step_statistics: Callable[[], Mapping[str, float]] | None = None,
    description: str = "train",
    lengths: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    lr_scales: Mapping[str, float] | None = None,
) -> LoopResult:
    """Train `parameters` of `vlm.model` on `train_examples` for `config.epochs` epochs; resume when a
    checkpoint of this run (same `fingerprint`) is in `checkpoint_dir`.

    `parameters` (name -> parameter, all requiring grad) is what is optimised and checkpointed.
    `step_statistics` adds fields (e.g. the router's gate statistics) to every step's record.
    `lengths` / `kinds`: each training example's token count and media kind (`filter_and_measure`), required by
    `config.group_by_length` (each epoch's order is then moir.batching.grouped_order).
    `lr_scales` (name -> factor): those parameters learn at `config.lr * factor`, in their own AdamW parameter group
    (the router's gates); the plateau scheduler scales every group alike.
    """
    if not train_examples:
        raise TrainingError("the training split has no examples")
    if config.group_by_length and (lengths is None or kinds is None
                                   or not len(lengths) == len(kinds) == len(train_examples)):
        raise TrainingError("group_by_length needs `lengths` and `kinds` with one entry per training example")
    model = vlm.model
    param_list = list(parameters.values())
    optimizer = torch.optim.AdamW(parameter_groups(parameters, config.lr, lr_scales or {}), lr=config.lr,
                                  weight_decay=config.weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # each group's peak rate (lr_schedule)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
        )
        if val_examples else None
    )
    if config.keep == "best" and not val_examples:
        raise TrainingError("keep: best needs a validation split")
    scheduled = config.lr_schedule != "constant" or config.warmup_steps > 0
    if scheduled and val_examples:
        raise TrainingError("lr_schedule / warmup_steps and a validation split's plateau scheduler exclude each "
                            "other: pass no validation split, or lr_schedule: constant and warmup_steps: 0")
    fingerprint = {**fingerprint, "loop": config.fingerprint()}
    state = LoopState()
    best_parameters: dict[str, torch.Tensor] | None = None  # keep: best, the weights of state.best_epoch

    resume_path = latest_checkpoint(checkpoint_dir)
    if resume_path is not None:
        payload = _load_checkpoint(resume_path, fingerprint)
        with torch.no_grad():
            for name, param in parameters.items():
                if name not in payload["parameters"]:
                    raise TrainingError(f"{resume_path}: checkpoint has no parameter {name!r}")
                param.copy_(payload["parameters"][name])
        optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(payload["scheduler"])
        state = LoopState(**payload["state"])
        best_parameters = payload.get("best_parameters")
        if state.best_epoch is None:  # a checkpoint from before the field: the epoch records say it
            for record in state.records:
                if record["kind"] == "epoch" and record["val_loss"] is not None and (
                        state.best_val_loss is None or record["val_loss"] < state.best_val_loss):
                    state.best_epoch, state.best_val_loss = record["epoch"], record["val_loss"]
        restore_rng_states(payload["rng"])
        state.resumed_from.append(state.global_step)
        log.info("resumed from %s (epoch %d, step %d of the epoch, global step %d)",
                 resume_path, state.epoch + 1, state.step_in_epoch, state.global_step)
    else:
        seed_everything(config.seed)

    def save(epoch_end: bool) -> Path | None:
        if checkpoint_dir is None:
            return None
        payload = {
            "fingerprint": fingerprint,
            "parameters": {name: param.detach().cpu() for name, param in parameters.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_states(),
            "state": dataclasses.asdict(state),
            "best_parameters": best_parameters,
        }
        path = _save_checkpoint(checkpoint_dir, payload)
        log.info("checkpoint %s (%s)", path, "epoch end" if epoch_end else "step interval")
        return path

    micro = config.micro_batch_size
    steps_per_epoch = math.ceil(len(train_examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    model.train()
    session_start = time.perf_counter()
    train_time_before = state.train_time_s
    progress = runtime.progress(total=total_steps, initial=state.global_step, desc=description, unit="step",
                    dynamic_ncols=True, mininterval=1.0)
    try:
        while state.epoch < config.epochs:
            if state.order is None:
                state.order = (
                    grouped_order(lengths, kinds, config.batch_size, seed=config.seed, epoch=state.epoch)
                    if config.group_by_length else epoch_order(len(train_examples), config.seed, state.epoch)
                )
            elif len(state.order) != len(train_examples):
                raise TrainingError(
                    f"checkpoint order covers {len(state.order)} examples, the training split has {len(train_examples)}"
                )
            step_loss = math.nan
            while state.step_in_epoch < steps_per_epoch:
                step_start = time.perf_counter()
                first = state.step_in_epoch * config.batch_size
                indices = state.order[first:first + config.batch_size]
                where = (f"step {state.global_step + 1} (epoch {state.epoch + 1}, "
                         f"batch {state.step_in_epoch + 1} of {steps_per_epoch})")
                if scheduled:
                    factor = lr_factor(state.global_step, total_steps, config.lr_schedule, config.warmup_steps)
                    for group, base_lr in zip(optimizer.param_groups, base_lrs):
                        group["lr"] = base_lr * factor
                lr = optimizer.param_groups[0]["lr"]
                try:
                    step_loss, grad_norm, step_tokens = optimizer_step(
                        vlm, [train_examples[i] for i in indices], micro, optimizer, param_list,
                        config.max_grad_norm, device, autocast_dtype,
                    )
                except NonFiniteLossError as error:
                    last = latest_checkpoint(checkpoint_dir) or "none (no checkpoint written yet)"
                    raise NonFiniteLossError(f"{error} at {where}; the last good checkpoint is {last}") from None
                state.step_in_epoch += 1
                state.global_step += 1
                step_time = time.perf_counter() - step_start
                record = {
                    "kind": "step", "step": state.global_step, "epoch": state.epoch + 1, "loss": step_loss,
                    "lr": lr, "grad_norm": grad_norm, "examples": len(indices), "tokens": step_tokens,
                    "step_time_s": step_time, "tokens_per_s": step_tokens / step_time,
                }
                if step_statistics is not None:
                    record.update(step_statistics())
                state.records.append(record)
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}", ex_s=f"{len(indices) / step_time:.1f}",
                                     tok_s=f"{step_tokens / step_time:.0f}")
                if (config.checkpoint_every and state.global_step % config.checkpoint_every == 0
                        and state.step_in_epoch < steps_per_epoch):
                    state.train_time_s = train_time_before + time.perf_counter() - session_start
                    save(epoch_end=False)

            val_loss = None
            if val_examples:
                val_loss = validation_loss(vlm, val_examples, micro, device, autocast_dtype)
                if not math.isfinite(val_loss):
                    raise NonFiniteLossError(f"non-finite validation loss ({val_loss}) after epoch {state.epoch + 1}")
                scheduler.step(val_loss)
                if state.best_val_loss is None or val_loss < state.best_val_loss:
                    state.best_epoch, state.best_val_loss = state.epoch + 1, val_loss
                    if config.keep == "best":
                        best_parameters = {name: param.detach().cpu().clone() for name, param in parameters.items()}
            state.records.append({
                "kind": "epoch", "epoch": state.epoch + 1, "step": state.global_step, "val_loss": val_loss,
                "lr": optimizer.param_groups[0]["lr"],
            })
            log.info("epoch %d/%d done: step %d, last train loss %.4f, val loss %s, lr %.3g", state.epoch + 1,
                     config.epochs, state.global_step, step_loss,
                     "n/a" if val_loss is None else f"{val_loss:.4f}", optimizer.param_groups[0]["lr"])
            state.epoch += 1
            state.step_in_epoch = 0
            state.order = None
            state.train_time_s = train_time_before + time.perf_counter() - session_start
            save(epoch_end=True)
    finally:
        progress.close()
    state.train_time_s = train_time_before + time.perf_counter() - session_start
    kept_epoch = state.epoch
    if config.keep == "best":
        with torch.no_grad():
            for name, param in parameters.items():
                param.copy_(best_parameters[name])
        kept_epoch = state.best_epoch
        log.info("keep: best: the weights of epoch %d (validation loss %.4f)", state.best_epoch, state.best_val_loss)
    return LoopResult(
        records=state.records,
        global_step=state.global_step,
        train_time_s=state.train_time_s,
        resumed_from=state.resumed_from,
        val_losses=[r["val_loss"] for r in state.records if r["kind"] == "epoch" and r["val_loss"] is not None],
        best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss,
        kept_epoch=kept_epoch,
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
