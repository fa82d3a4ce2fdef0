"""Pretrain a demo base model: a tiny architecture, built from its config, fully fine-tuned from pixels.

The demo suite cannot download LLaVA-1.5 or Qwen2.5-VL, so it makes its own bases: `build_tiny_model` draws the
random weights of a narrow, shallow model of the real architecture (moir/models/tiny.py), and this stage trains
every weight of it, vision tower included, from raw pixels on the synthetic benchmark's `pretrain` split. The
result is written with `save_pretrained` (model, tokenizer, processor), so the LoRA runs and the encoder cache load
it through exactly the code path of a hub model. It uses the same loop as `moir.train` (moir/train/loop.py):
same loss, same checkpoints and resume, same metrics file. There is no validation split, hence no plateau
scheduler: the learning rate is constant, or follows --lr-schedule (cosine or linear decay, after --warmup-steps).
With --phases the base trains in phases, each a run of the loop over the split with question types repeated by
their weights (moir/train/curriculum.py: colours first, then direction, for the study's video base).

Usage (one Snakemake rule per base; --data takes a manifest and, for a video dataset, its frames table):

    python -m moir.train.pretrain --name tiny-llava --seed 0 \
        --data data/manifests/synth-image/pretrain.parquet \
        --out-dir results/demo/base/tiny-llava [--checkpoint-dir results/demo/checkpoints/base-tiny-llava]
    python -m moir.train.pretrain --name tiny-qwen2.5-vl --seed 0 \
        --data data/manifests/synth-video/pretrain.parquet data/media/synth-video/pretrain/frames.parquet \
        --data data/manifests/synth-image/pretrain.parquet \
        --out-dir results/demo/base/tiny-qwen2.5-vl

Output, written only at the end, atomically (a temporary directory renamed to --out-dir):

    <out-dir>/  config.json, model.safetensors, generation_config.json, tokenizer and processor files
                (save_pretrained: `moir.models.load_vlm(<out-dir>)` loads it)
    <out-dir>/pretrain_metrics.jsonl   one JSON object per optimizer step and per epoch (as train_metrics.jsonl)
    <out-dir>/run_card.json            config, versions, data fingerprints, parameter count, wall time, peak memory
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Subset

from moir.settings import add_settings_argument, parse
from moir.dataset import load_examples
from moir.models import load_vlm
from moir.models.tiny import TINY_MODELS, TINY_TEXT_LAYERS, build_tiny_model
from moir.runtime import cli, fingerprint, package_versions, peak_memory, resolve_device, setup_logging
from moir.storage import atomic_directory, write_json_atomic, write_jsonl_atomic
from moir.train.curriculum import Phase, format_phases, parse_phases, phase_indices, question_type
from moir.train.loop import (
    LR_SCHEDULES,
    LoopConfig,
    TrainingError,
    filter_by_length,
    remove_checkpoints,
    run_training,
)

log = logging.getLogger("moir.train.pretrain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moir.train.pretrain", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--name", choices=TINY_MODELS, required=True, help="which tiny architecture")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the data order")
    parser.add_argument("--text-layers", type=int, default=TINY_TEXT_LAYERS,
                        help="decoder layers of the tiny language model (moir/models/tiny.py)")
    parser.add_argument("--data", nargs="+", action="append", required=True, metavar="PATH",
                        help="a manifest, followed by its frames table when it has videos (repeatable)")
    parser.add_argument("--limit", type=int, help="use only the first N examples of each manifest (smoke runs)")
    parser.add_argument("--epochs", type=int, help="passes over the pretraining data (default 2; with --phases: "
                        "their total, checked)")
    parser.add_argument("--phases", type=parse_phases, metavar="EPOCHS[:TYPE=W,...];...",
                        help="pretrain in phases, each a loop run over the split with question types repeated by "
                             "their weights (moir.train.curriculum), e.g. '2:direction=0;1:direction=3'")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW (peak) learning rate")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                        help="per-step decay of the learning rate to about 0 at the last step (moir.train.loop.lr_factor)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps before the schedule")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (divides --batch-size)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping; 0 turns it off")
    parser.add_argument("--max-length", type=int, default=1024, help="longer examples are dropped and listed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--out-dir", type=Path, required=True, help="the save_pretrained directory of the base")
    parser.add_argument("--checkpoint-dir", type=Path, help="resumable checkpoints (none when not given)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="optimizer steps; 0 = epoch ends only")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    add_settings_argument(parser)
    return parser


def parse_data(entries: list[list[str]]) -> list[tuple[Path, Path | None]]:
    """[[manifest] or [manifest, frames], ...] -> [(manifest, frames or None)], every file checked to exist."""
    data = []
    for entry in entries:
        if len(entry) > 2:
            raise ValueError(f"--data takes a manifest and at most one frames table, got {entry}")
        manifest, frames = Path(entry[0]), Path(entry[1]) if len(entry) == 2 else None
        for path in (manifest, frames):
            if path is not None and not path.is_file():
                raise ValueError(f"--data: file not found: {path}")
        data.append((manifest, frames))
    return data


def resolve_phases(epochs: int | None, phases: tuple[Phase, ...] | None) -> tuple[Phase, ...]:
    """The run's phases: --phases (whose total must equal --epochs when both are given), or one plain phase of
    --epochs (default 2) passes."""
    if phases is None:
        return (Phase(2 if epochs is None else epochs),)
    total = sum(phase.epochs for phase in phases)
    if epochs is not None and epochs != total:
        raise ValueError(f"--epochs {epochs} does not match --phases, whose epochs add up to {total}")
    return phases


def example_types(splits: list, kept: Subset) -> list[str | None]:
    """The question type (moir.train.curriculum.question_type of the manifest's `category`) of each kept example."""
    types = [question_type(row.get("category")) for split in splits for row in split.rows]
    return [types[index] for index in kept.indices]


def run_phases(vlm, parameters: dict, examples: Subset, types: list[str | None], phases: tuple[Phase, ...],
               loop_config: LoopConfig, run_fingerprint: dict, checkpoint_dir: Path | None, device: torch.device,
               name: str) -> tuple[list[int], list]:
    """One run of the loop per phase, in order, each from the weights the last left, over the phase's pass
    (`phase_indices`), with its own optimizer, warm-up and schedule (the phase's lr settings, or the stage's), and
    checkpoints in `checkpoint_dir/phase-<k>` (a rerun finds the finished phases' last checkpoints and goes on).
    Returns each pass's size and each phase's result."""
    passes, results = [], []
    for k, phase in enumerate(phases):
        indices = phase_indices(types, phase.question_weights, seed=loop_config.seed * 1_000_003 + k)
        log.info("phase %d of %d: %d epoch(s) over %d examples (question weights %s)", k + 1, len(phases),
                 phase.epochs, len(indices), dict(phase.question_weights) or "none")
        passes.append(len(indices))
        results.append(run_training(
            vlm, parameters, Subset(examples, indices), [],
            dataclasses.replace(loop_config, epochs=phase.epochs, **phase.overrides()),
            fingerprint={**run_fingerprint, "phase": k, "phases": [p.to_dict() for p in phases[:k + 1]]},
            checkpoint_dir=None if checkpoint_dir is None else checkpoint_dir / f"phase-{k}", device=device,
            description=f"pretrain {name} (phase {k + 1}/{len(phases)})",
        ))
    return passes, results


def pretrain(args: argparse.Namespace) -> Path:
    phases = resolve_phases(args.epochs, args.phases)
    loop_config = LoopConfig(
        epochs=phases[0].epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, max_length=args.max_length,
        seed=args.seed, checkpoint_every=args.checkpoint_every, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps,
    )
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"limit must be a positive integer, got {args.limit}")
    data = parse_data(args.data)
    device = resolve_device(args.device)
    started = time.perf_counter()

    args.out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{args.out_dir.name}.init-", dir=args.out_dir.parent) as init_dir:
        build_tiny_model(args.name, init_dir, seed=args.seed, text_layers=args.text_layers)
        vlm = load_vlm(init_dir, device=device, dtype=torch.float32)  # full fine-tune: fp32 weights
        vlm.name = args.name

    parameters = dict(vlm.hf_model.named_parameters())
    for param in parameters.values():
        param.requires_grad_(True)
    splits = []
    for manifest, frames in data:
        examples = load_examples(manifest, frames_path=frames, vlm=vlm, with_answer=True, limit=args.limit)
        if not len(examples):
            raise TrainingError(f"{manifest}: the split has no examples")
        splits.append(examples)
    train_examples, dropped = filter_by_length(vlm, ConcatDataset(splits), loop_config.max_length)
    if dropped:
        log.warning("dropped %d example(s) longer than %d tokens: %s", len(dropped), loop_config.max_length,
                    ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
    if not len(train_examples):
        raise TrainingError(f"no example fits in --max-length {loop_config.max_length}")

    inputs = {str(manifest): {"manifest": fingerprint(manifest), "frames": fingerprint(frames)}
              for manifest, frames in data}
    run_fingerprint = {"name": args.name, "text_layers": args.text_layers, "inputs": inputs, "limit": args.limit}
    n_parameters = sum(p.numel() for p in parameters.values())
    log.info("pretraining %s (%d parameters) on %d examples from pixels on %s", args.name, n_parameters,
             len(train_examples), device)
    if args.phases is None:  # one plain run: its checkpoints and fingerprint are what they were before phases
        passes = None
        results = [run_training(
            vlm, parameters, train_examples, [], loop_config,
            fingerprint=run_fingerprint, checkpoint_dir=args.checkpoint_dir, device=device,
            description=f"pretrain {args.name}",
        )]
    else:
        passes, results = run_phases(vlm, parameters, train_examples, example_types(splits, train_examples),
                                     phases, loop_config, run_fingerprint, args.checkpoint_dir, device, args.name)
    records = [{**record, "phase": k} if passes is not None else record
               for k, phase_result in enumerate(results) for record in phase_result.records]
    card = {
        "stage": "pretrain",
        "config": {key: str(value) if isinstance(value, Path) else format_phases(value) if key == "phases" and value
                   else value for key, value in vars(args).items()},
        "loop": loop_config.fingerprint(),
        "phases": [phase.to_dict() for phase in phases] if args.phases is not None else None,
        "inputs": inputs,
        "versions": package_versions(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "family": vlm.family,
        "parameters": n_parameters,
        "examples": len(train_examples),
        "examples_per_pass": passes,
        "dropped_too_long": dropped,
        "optimizer_steps": sum(r.global_step for r in results),
        "resumed_from_steps": [step for r in results for step in r.resumed_from],
        "final_train_loss": next(r["loss"] for r in reversed(records) if r["kind"] == "step"),
        "train_time_s": round(sum(r.train_time_s for r in results), 3),
        "wall_time_s_this_session": round(time.perf_counter() - started, 3),
        **peak_memory(device),
    }

    with atomic_directory(args.out_dir) as directory:
        vlm.hf_model.save_pretrained(directory)
        vlm.processor.save_pretrained(directory)
        write_jsonl_atomic(records, directory / "pretrain_metrics.jsonl")
        write_json_atomic(card, directory / "run_card.json")
    log.info("wrote %s (final train loss %.4f, %d steps, %.1f s)", args.out_dir, card["final_train_loss"],
             card["optimizer_steps"], card["train_time_s"])
    if args.checkpoint_dir is not None:
        for k in range(len(results) if passes is not None else 0):
            remove_checkpoints(args.checkpoint_dir / f"phase-{k}")
        remove_checkpoints(args.checkpoint_dir)
    return args.out_dir


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    setup_logging(args.log_level)
    try:
        pretrain(args)
    except (TrainingError, ValueError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    cli(main)
