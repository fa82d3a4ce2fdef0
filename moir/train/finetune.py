"""Train one run: LoRA fine-tuning of a vision-language model, with (`moir`) or without (`ft`) the router.

A run reads a dataset's manifests and their encoder caches (never the raw media: the vision tower is frozen
and its output was cached once by `moir.encoder_cache.cache`), builds prompts and labels with the model wrapper, and trains
LoRA (plus the router's gates when the method is `moir`). The defaults are the paper's settings (Section 4.1):
10 epochs, AdamW lr 2e-4 without weight decay, batch 8, ReduceLROnPlateau on the validation loss, LoRA r=16
alpha=32 dropout=0.05, max length 2048, gates initialised at 0.5, bfloat16 on a GPU (float32 on CPU).
Settings the paper does not state are options with stated defaults: gradient clipping at norm 1.0 (the Hugging
Face Trainer's default, used by the LLaVA recipes), plateau factor 0.5 and patience 1 (10 epochs leave no room
for the PyTorch default patience of 10). Examples longer than --max-length are dropped and listed in the run card
(truncation would cut visual tokens or the answer).

Usage (one Snakemake rule per run):

    python -m moir.train \
        --model results/demo/base/tiny-llava [--revision REV] \
        --train-manifest data/manifests/synth-image/train.parquet --train-cache data/cache/synth-image/train/<enc> \
        --val-manifest data/manifests/synth-image/val.parquet --val-cache data/cache/synth-image/val/<enc> \
        [--train-transcripts data/transcripts/<ds>/train.parquet --val-transcripts ...] \
        --placement attn --method moir --router '{"ratio": 0.1}' --seed 0 \
        --out-dir results/demo/runs/<run> --checkpoint-dir results/demo/checkpoints/<run>

Outputs, written only when training has finished, atomically (a temporary directory renamed to --out-dir):

    <out-dir>/                      vlm.save_trainable(): the LoRA adapter and the router's gates
    <out-dir>/train_metrics.jsonl   one JSON object per optimizer step {"kind": "step", step, epoch, loss, lr,
                                    grad_norm, examples, tokens, step_time_s, tokens_per_s, alpha_{a,b}_{mean,
                                    min,max} (moir)} and per epoch {"kind": "epoch", epoch, step, val_loss, lr}
    <out-dir>/run_card.json         config, package versions, data/cache/model fingerprints, example counts,
                                    trainable parameters, wall time, peak memory, resumed steps, final val loss,
                                    best_epoch and best_val_loss (the lowest validation loss), keep and kept_epoch
                                    (whose weights the adapter holds: --keep last, the default, or best)

Checkpoints (`moir.train.loop`) go to --checkpoint-dir every --checkpoint-every optimizer steps and at every
epoch end; a run started again with the same arguments resumes from the newest one and ends with the same weights
as an uninterrupted run. They are deleted once the outputs are written (--keep-checkpoints keeps them).
Exit status 1 with a one-line error for bad arguments, an empty split, a cache that does not match the model,
a checkpoint of another run, or a non-finite loss (which names the step; the last good checkpoint stays).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch

from moir.compression import check_keep_ratio
from moir.dataset import load_examples
from moir.models import load_vlm
from moir.models.fetch import locked_source
from moir.models.pixel_budget import PixelBudget
from moir.settings import add_settings_argument, json_object, parse
from moir.router import RouterConfig
from moir.runtime import (
    cli,
    fingerprint,
    package_versions,
    peak_memory,
    resolve_device,
    resolve_dtype,
    setup_logging,
)
from moir.storage import atomic_directory, write_json_atomic, write_jsonl_atomic
from moir.train.loop import (
    KEEP,
    LoopConfig,
    TrainingError,
    filter_and_measure,
    filter_by_length,
    remove_checkpoints,
    run_training,
)

log = logging.getLogger("moir.train")

PLACEMENTS = ("attn", "mlp", "proj")
METHODS = ("ft", "moir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moir.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data (manifests and encoder-token caches)")
    data.add_argument("--train-manifest", type=Path, required=True, help="manifest of the training split")
    data.add_argument("--train-cache", type=Path, required=True, help="encoder-token cache of the training split")
    data.add_argument("--train-transcripts", type=Path, help="ASR transcripts of the training split (audio as text)")
    data.add_argument("--val-manifest", type=Path, required=True,
                      help="manifest of the validation split (its loss drives the plateau scheduler)")
    data.add_argument("--val-cache", type=Path, required=True, help="encoder-token cache of the validation split")
    data.add_argument("--val-transcripts", type=Path, help="ASR transcripts of the validation split")
    data.add_argument("--train-limit", type=int, help="use only the first N training examples (smoke runs)")
    data.add_argument("--val-limit", type=int, help="use only the first N validation examples")
    data.add_argument("--transcript-max-tokens", type=int,
                      help="cap each transcript to this many of the model's tokens (moir.media.transcript_cap)")

    run = parser.add_argument_group("run")
    run.add_argument("--model", required=True, help="base model: a save_pretrained directory or a hub id")
    run.add_argument("--revision", help="hub revision (branch, tag or commit) of --model; a directory ignores it")
    run.add_argument("--hub-lock", type=Path, help="lock file of fetch_models: load --model offline from it")
    run.add_argument("--hub-name", help="--model's name in --hub-lock")
    run.add_argument("--pixel-budget", type=json_object, metavar="JSON",
                     help="Qwen2.5-VL: pixel limits (moir.models.pixel_budget), those of the encoder cache")
    run.add_argument("--placement", choices=PLACEMENTS, required=True, help="where LoRA goes")
    run.add_argument("--method", choices=METHODS, required=True, help="ft: LoRA alone; moir: LoRA + router")
    run.add_argument("--seed", type=int, default=0, help="seeds LoRA's initialisation, the data order, dropout")
    run.add_argument("--keep-ratio", type=float,
                     help="visual-token compression (moir.compression): keep this share (0, 1] of each image's (video "
                          "frame's) visual tokens, the top ones by the cached encoder scores; omit for all")

    optim = parser.add_argument_group("optimisation (defaults: the paper's Section 4.1)")
    optim.add_argument("--epochs", type=int, default=10, help="training epochs")
    optim.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate")
    optim.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    optim.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    optim.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (divides --batch-size)")
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping; 0 turns it off")
    optim.add_argument("--plateau-factor", type=float, default=0.5, help="ReduceLROnPlateau factor")
    optim.add_argument("--plateau-patience", type=int, default=1, help="ReduceLROnPlateau patience (epochs)")
    optim.add_argument("--max-length", type=int, default=2048, help="longer examples are dropped and listed")
    optim.add_argument("--group-by-length", action="store_true",
                       help="batches of one modality and similar length (moir.batching), seeded and resumable")

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    lora.add_argument("--lora-alpha", type=float, default=32, help="LoRA scaling alpha")
    lora.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on LoRA's input")

    router = parser.add_argument_group("router (moir only)")
    router.add_argument("--router", type=json_object, metavar="JSON",
                        help="moir.router.RouterConfig as a JSON object, k' included, e.g. "
                             "'{\"ratio\": 0.1, \"align\": \"attend\"}'; a field left out takes RouterConfig's "
                             "default (the one home of the router's defaults)")

    system = parser.add_argument_group("system")
    system.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    system.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="auto: bfloat16 on a GPU, float32 on CPU")
    system.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (7B/13B at batch 8)")
    system.add_argument("--checkpoint-every-n-layers", type=int, default=1,
                        help="with --gradient-checkpointing: every n-th decoder layer only (7B: 2 fits an H100)")

    output = parser.add_argument_group("outputs")
    output.add_argument("--out-dir", type=Path, required=True, help="adapter, train_metrics.jsonl, run_card.json")
    output.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable checkpoints of this run")
    output.add_argument("--checkpoint-every", type=int, default=200, help="optimizer steps; 0 = epoch ends only")
    output.add_argument("--keep-checkpoints", action="store_true", help="keep the last checkpoint after the run")
    output.add_argument("--keep", choices=KEEP, default="last",
                        help="which weights the run writes: those after the last epoch, or those of the epoch with "
                        "the lowest validation loss (the paper does not say; last is its literal reading)")
    output.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    add_settings_argument(parser)
    return parser


def configs_from_args(args: argparse.Namespace) -> tuple[LoopConfig, RouterConfig | None, dict]:
    """Validate every setting before anything is loaded; raise ValueError naming the bad one."""
    loop = LoopConfig(
        epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, plateau_factor=args.plateau_factor,
        plateau_patience=args.plateau_patience, max_length=args.max_length, seed=args.seed,
        checkpoint_every=args.checkpoint_every, keep=args.keep, group_by_length=args.group_by_length,
    )
    router = None
    if args.method == "moir":
        known = {item.name for item in dataclasses.fields(RouterConfig)}
        unknown = sorted(set(args.router or {}) - known)
        if unknown:
            raise ValueError(f"--router: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        router = RouterConfig(**(args.router or {}))
    elif args.router is not None:
        raise ValueError("--router belongs to --method moir")
    if args.lora_r < 1:
        raise ValueError(f"lora_r must be a positive integer, got {args.lora_r}")
    if args.lora_alpha <= 0:
        raise ValueError(f"lora_alpha must be positive, got {args.lora_alpha}")
    if not 0 <= args.lora_dropout < 1:
        raise ValueError(f"lora_dropout must lie in [0, 1), got {args.lora_dropout}")
    for name in ("train_limit", "val_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(args, name)}")
    for name in ("train_manifest", "val_manifest", "train_transcripts", "val_transcripts"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            raise ValueError(f"{name.replace('_', '-')}: file not found: {path}")
    for name in ("train_cache", "val_cache"):
        if not getattr(args, name).is_dir():
            raise ValueError(f"{name.replace('_', '-')}: cache directory not found: {getattr(args, name)}")
    if args.keep_ratio is not None:
        check_keep_ratio(args.keep_ratio, "keep_ratio")
    lora = {"placement": args.placement, "r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout}
    return loop, router, lora


def trainable_parameters(vlm) -> dict[str, torch.nn.Parameter]:
    """LoRA weights and router gates (name -> parameter), in a fixed order; kept in float32 for AdamW."""
    named = {name: p for name, p in vlm.model.named_parameters() if p.requires_grad}
    if vlm.router is not None:
        known = {id(p) for p in named.values()}
        for name, param in vlm.router.named_parameters():
            if id(param) not in known:
                named[f"router.{name}"] = param
    for param in named.values():
        if param.dtype != torch.float32:
            param.data = param.data.float()
    return named


def gate_lr_scales(parameters: dict[str, torch.nn.Parameter], router: RouterConfig | None) -> dict[str, float]:
    """The router's gates in their own optimizer group at lr * router.gate_lr_scale (none without a router, or at
    the paper's scale 1, which keeps the single group of the paper's recipe)."""
    if router is None or router.gate_lr_scale == 1:
        return {}
    return {name: router.gate_lr_scale for name in parameters if name.startswith("router.")}


def load_split(name: str, manifest: Path, cache: Path, transcripts: Path | None, vlm, limit: int | None,
               transcript_max_tokens: int | None = None):
    examples = load_examples(manifest, cache_dir=cache, transcripts_path=transcripts, vlm=vlm,
                             with_answer=True, limit=limit, transcript_max_tokens=transcript_max_tokens)
    if not examples:
        raise TrainingError(f"{manifest}: the {name} split has no examples")
    return examples


def train(args: argparse.Namespace) -> Path:
    loop_config, router_config, lora = configs_from_args(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    started = time.perf_counter()

    budget = PixelBudget.from_mapping(args.pixel_budget, "--pixel-budget") if args.pixel_budget else None
    source = locked_source(args.model, args.revision, args.hub_lock, args.hub_name)
    vlm = load_vlm(source, device=device, dtype=dtype, revision=None if args.hub_lock else args.revision,
                   pixel_budget=budget)
    vlm.compress(args.keep_ratio)
    # The splits first: their caches are checked against the encoder as loaded, before LoRA changes the model.
    train_examples = load_split("train", args.train_manifest, args.train_cache, args.train_transcripts, vlm,
                                args.train_limit, args.transcript_max_tokens)
    val_examples = load_split("val", args.val_manifest, args.val_cache, args.val_transcripts, vlm, args.val_limit,
                              args.transcript_max_tokens)
    train_examples, train_dropped, lengths, kinds = filter_and_measure(vlm, train_examples, loop_config.max_length)
    val_examples, val_dropped = filter_by_length(vlm, val_examples, loop_config.max_length)
    for split, dropped in (("train", train_dropped), ("val", val_dropped)):
        if dropped:
            log.warning("%s: dropped %d example(s) longer than %d tokens: %s", split, len(dropped),
                        loop_config.max_length, ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
    if not train_examples or not val_examples:
        raise TrainingError(f"no example fits in --max-length {loop_config.max_length} "
                            f"({'train' if not train_examples else 'val'} split)")

    torch.manual_seed(args.seed)  # LoRA's initialisation
    vlm.apply_lora(lora["placement"], r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"])
    if router_config is not None:
        vlm.attach_router(router_config)
    parameters = trainable_parameters(vlm)
    trainable_count = vlm.num_trainable_parameters()
    if args.gradient_checkpointing:
        vlm.enable_gradient_checkpointing(every_n_layers=args.checkpoint_every_n_layers)

    inputs = {
        "model": args.model,
        "model_fingerprint": fingerprint(args.model),
        "revision": args.revision,  # as asked for (--revision)
        "model_revision": getattr(vlm.hf_model.config, "_commit_hash", None),  # as resolved (hub models)
        **{name: fingerprint(getattr(args, name)) for name in (
            "train_manifest", "train_cache", "train_transcripts", "val_manifest", "val_cache", "val_transcripts")},
    }
    run_fingerprint = {
        "inputs": inputs, "method": args.method, "router": router_config.to_dict() if router_config else None,
        "lora": lora, "dtype": str(dtype), "train_limit": args.train_limit, "val_limit": args.val_limit,
    }
    if args.transcript_max_tokens is not None:  # the fingerprint of an uncapped run is what it was before
        run_fingerprint["transcript_max_tokens"] = args.transcript_max_tokens
    if args.keep_ratio is not None:  # likewise for an uncompressed run
        run_fingerprint["keep_ratio"] = args.keep_ratio
    log.info("%s/%s on %s: %d train / %d val examples, %d trainable parameters, %s on %s", args.method,
             lora["placement"], args.model, len(train_examples), len(val_examples), trainable_count, dtype, device)

    result = run_training(
        vlm, parameters, train_examples, val_examples, loop_config,
        fingerprint=run_fingerprint, checkpoint_dir=args.checkpoint_dir, device=device,
        autocast_dtype=dtype if dtype != torch.float32 else None,
        step_statistics=vlm.router.gate_statistics if vlm.router is not None else None,
        lr_scales=gate_lr_scales(parameters, router_config),
        description=f"train {args.out_dir.name}",
        lengths=lengths, kinds=kinds,
    )

    card = {
        "stage": "train",
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "loop": loop_config.fingerprint(),
        "lora": lora,
        "router": router_config.to_dict() if router_config else None,
        "inputs": inputs,
        "versions": package_versions(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": str(dtype),
        "torch_threads": torch.get_num_threads(),
        "family": vlm.family,
        "trainable_parameters": trainable_count,
        "examples": {"train": len(train_examples), "val": len(val_examples)},
        "dropped_too_long": {"train": train_dropped, "val": val_dropped},
        "optimizer_steps": result.global_step,
        "resumed_from_steps": result.resumed_from,
        "final_val_loss": result.val_losses[-1],
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "keep": args.keep,
        "kept_epoch": result.kept_epoch,
        "keep_ratio": args.keep_ratio,
        "train_time_s": round(result.train_time_s, 3),
        "wall_time_s_this_session": round(time.perf_counter() - started, 3),
        **peak_memory(device),
    }

    with atomic_directory(args.out_dir) as directory:
        vlm.write_trainable(directory)
        write_jsonl_atomic(result.records, directory / "train_metrics.jsonl")
        write_json_atomic(card, directory / "run_card.json")
    log.info("wrote %s (final val loss %.4f, %d steps, %.1f s)", args.out_dir, result.val_losses[-1],
             result.global_step, result.train_time_s)
    if not args.keep_checkpoints:
        remove_checkpoints(args.checkpoint_dir)
    return args.out_dir


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    setup_logging(args.log_level)
    try:
        train(args)
    except (TrainingError, ValueError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    cli(main)
