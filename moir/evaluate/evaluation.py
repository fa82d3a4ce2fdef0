"""Evaluate a trained run (or a base model) on one manifest: predictions, accuracy, MDI/AEI, effective rank,
robustness.

Predictions are greedy generations through the model wrapper (`moir.models`) with each benchmark's reference prompt
(`moir.prompts`, via `moir.dataset.load_examples`, exactly as in training). Three modes:

    clean      the inputs as they are (encoder cache or pixels). Also, unless --no-analysis: one teacher-forced
               forward pass over the model's own answer that records (i) per layer, the attention mass from the
               positions that produce the answer (the last prompt token through the last answer token before the
               end-of-turn token) to the prompt's text tokens T and visual tokens O (heads and query positions
               averaged; `moir.evaluate.attention`, SDPA stays on) and (ii) the effective rank of the visual and
               the text token states of each example at --rank-layer (the output of that decoder layer, before the
               final norm) and at the input embeddings (the router's output). With --base-eval (the base model's
               clean evaluation on the same manifest) the rank deltas (this run minus the base, same examples,
               same layer) are reported.
    noise      every image, and every frame of every video, replaced by Gaussian noise of the same size
               (N(127.5, 64^2) per pixel and channel, clipped to 0..255, uint8), drawn from a stream seeded by
               (--noise-seed, sha256 of the example id), so it does not depend on batching or order. Needs pixels
               (images from the manifest's media root, video frames from --frames), never the encoder cache. With
               --clean-eval (this run's clean evaluation) and --vision-split: the robustness metric, the rate of
               unchanged normalised predictions for all, vision-dependent and vision-irrelevant questions (over
               the questions that have an image or video: a text-only question has nothing to replace).
    no-image   the media removed (the prompt and any audio transcript stay). Also writes vision_split.parquet:
               a question is vision-irrelevant when the model answers it correctly without its image. Run it once
               on the base model; every run's noise evaluation reads that one split.

"Normalised" predictions: the parsed option letter for multiple-choice questions (an unparseable reply keeps its
normalised text), the official VQA normalisation otherwise. "Correct" (for the split): the right option; for
VizWiz full VQA credit (>= 3 annotators gave it); exact match for the synthetic short answers; judge score >= 2
("largely correct") for MMBench-Video.

Accuracy follows each benchmark's protocol (`moir.metrics`): ScienceQA option letters (all questions and the
image subset), the official VizWiz accuracy (overall, per answer type, unanswerability AP and F1), MMBench-Video
judge scores (`moir.evaluate.judge`, --judge openai|local): the share judged correct (score >=
--judge-correct-threshold) and VLMEvalKit's mean scores all/valid and per dimension; exact match for the synthetic
short answers. The headline `accuracy.value` is the mean per-example score in percent (option and exact match 0/1,
VizWiz accuracy, judged correct 0/1). A judge call that fails after its retries scores -1 (a failed judgement);
more than --judge-max-failed-share failed calls stop the evaluation.

Usage (one rule per (run, evaluation)):

    python -m moir.evaluate --model results/demo/base/tiny-llava [--revision REV] [--run results/demo/runs/<run>] \\
        --manifest data/manifests/synth-image/test.parquet \\
        [--cache-dir data/cache/synth-image/test/<enc>] [--frames data/media/<ds>/test/frames.parquet] \\
        [--transcripts data/transcripts/<ds>/test.parquet] \\
        --mode clean|noise|no-image --out-dir results/demo/eval/<run>/<evaluation> \\
        [--base-eval results/demo/eval/base/<evaluation>]                        (clean: rank deltas) \\
        [--clean-eval results/demo/eval/<run>/<clean evaluation>] \\
        [--vision-split results/demo/eval/base/<no-image evaluation>/vision_split.parquet]   (noise) \\
        [--judge openai --judge-url http://host:8000/v1 --judge-model NAME [--judge-api-key-env VAR] \\
         | --judge local --judge-model PATH_OR_HUB_ID] [--judge-cache FILE]      (open-ended questions)

Outputs in --out-dir, each written atomically once complete:

    predictions.parquet   one row per example: id, protocol, prediction, normalized, score, correct, judge_reply
                          (+ clean analysis: n_text, n_visual, n_answer (token counts; n_answer: the query
                          positions), attn_text, attn_visual (per decoder layer: attention mass on T / O, heads
                          averaged, mean over the query positions), erank_text, erank_visual (at --rank-layer),
                          erank_text_input, erank_visual_input (at the input embeddings))
    metrics.json          every number and how it was measured (mode, layers, rank layer, split, judge, noise,
                          inputs); `summary` holds the report's columns (acc, mdi, aei, rank_delta_image,
                          rank_delta_text, unchanged_all, unchanged_vision_dependent, unchanged_vision_irrelevant,
                          acc_hint_right, acc_hint_wrong, hint_follow, router_tv, router_changed); `reliance` on
                          questions with a labelled hint (moir.metrics.reliance); `router_effect` for a MoIR run's
                          clean evaluation (moir.evaluate.router_effect: router on vs off)
    vision_split.parquet  (no-image mode) id, no_image_correct, vision_split

While it runs, predictions go to predictions.parts/ (one Parquet file per --flush-every examples); an interrupted
evaluation started again with the same arguments and inputs resumes there (other settings: the parts are
discarded). The parts are removed once metrics.json is written. Exit status 1 with a one-line error for a
malformed input file (named, with the field), a missing split or base evaluation, or an unreachable judge.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from moir import runtime

from moir.data.manifest import ManifestError, read_manifest
from moir.settings import add_settings_argument, json_object, parse
from moir.compression import check_keep_ratio
from moir.dataset import load_examples
from moir.evaluate import EvaluationError
from moir.evaluate.analysis import RANK_SITE, analyse, dominance_metrics, rank_metrics
from moir.evaluate.judge import JudgeCache, JudgeError, LocalJudge
from moir.evaluate.noise import NOISE_MEAN, NOISE_STD, prepare_example
from moir.evaluate.router_effect import measure as measure_router_effect
from moir.evaluate.router_effect import router_effect_metrics
from moir.evaluate.scoring import accuracy_metrics, make_judge, reliance_metrics, robustness_metrics, score_predictions
from moir.evaluate.store import (
    ANALYSIS_FIELDS,
    METRICS_FILE,
    PREDICTIONS_FILE,
    PREDICTIONS_SCHEMA,
    SPLIT_FILE,
    SPLIT_SCHEMA,
    PartStore,
    read_evaluation,
    read_vision_split,
)
from moir.metrics import vision_irrelevant_split
from moir.models import load_vlm
from moir.models.fetch import locked_source
from moir.models.pixel_budget import PixelBudget
from moir.prompts import protocol
from moir.runtime import cli, fingerprint, package_versions, resolve_device, resolve_dtype, setup_logging
from moir.storage import write_table_atomic, write_text_atomic

log = logging.getLogger("moir.evaluate")

MODES = ("clean", "noise", "no-image")

__all__ = ["EvaluationError", "build_parser", "evaluate", "main", "predict", "summary"]


# ---------------------------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moir.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="base model: a save_pretrained directory or a hub id")
    model.add_argument("--revision", help="hub revision (branch, tag or commit) of --model; a directory ignores it")
    model.add_argument("--hub-lock", type=Path, help="lock file of fetch_models: load --model offline from it")
    model.add_argument("--hub-name", help="--model's name in --hub-lock")
    model.add_argument("--pixel-budget", type=json_object, metavar="JSON",
                       help="Qwen2.5-VL: pixel limits (moir.models.pixel_budget), those of the encoder cache")
    model.add_argument("--run", type=Path, help="a LoRA run's directory (moir.train: LoRA + router); omit for "
                       "the base model")
    model.add_argument("--keep-ratio", type=float,
                       help="visual-token compression (moir.compression): keep this share (0, 1] of each image's "
                            "(video frame's) visual tokens by the encoder's scores; omit for all (a run trained "
                            "with compression is evaluated with its ratio)")
    model.add_argument("--run-name", help="name recorded in metrics.json (default: the run directory's name, "
                       "or 'base')")
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", type=Path, required=True)
    data.add_argument("--cache-dir", type=Path, help="encoder-token cache (clean and no-image modes; else pixels)")
    data.add_argument("--frames", type=Path, help="frames table of `moir.media extract` (videos from pixels)")
    data.add_argument("--transcripts", type=Path, help="ASR transcripts (the audio as text)")
    data.add_argument("--limit", type=int, help="evaluate only the first N examples (smoke runs)")
    data.add_argument("--transcript-max-tokens", type=int, help="cap each transcript to this many tokens")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--mode", choices=MODES, default="clean")
    evaluation.add_argument("--noise-seed", type=int, default=0)
    evaluation.add_argument("--max-new-tokens", type=int, default=16)
    evaluation.add_argument("--batch-size", type=int, default=8)
    evaluation.add_argument("--no-analysis", action="store_true", help="clean mode: skip MDI/AEI and ranks")
    evaluation.add_argument("--router-effect-limit", type=int,
                            help="a MoIR run's clean evaluation: measure the router's effect (on vs off) on the "
                                 "first N examples only (default: all); it costs a generation and two forward passes "
                                 "per example")
    evaluation.add_argument("--rank-layer", type=int, default=-1,
                            help="where the effective rank is taken: k >= 1 the output of decoder layer k-1 before "
                            "the final norm, 0 the input embeddings, -1 the last decoder layer's output")
    evaluation.add_argument("--base-eval", type=Path, help="the base model's clean evaluation dir (rank deltas)")
    evaluation.add_argument("--clean-eval", type=Path, help="noise mode: this run's clean evaluation dir")
    evaluation.add_argument("--vision-split", type=Path, help="noise mode: the base model's vision_split.parquet")
    judge = parser.add_argument_group("judge (open-ended questions: MMBench-Video)")
    judge.add_argument("--judge", choices=("openai", "local", "defer"),
                       help="openai-compatible endpoint or a local model; defer: leave the open-ended answers "
                            "unscored for the judge stage (moir.evaluate.judge_stage)")
    judge.add_argument("--judge-url", help="base URL of the endpoint, e.g. http://localhost:8000/v1")
    judge.add_argument("--judge-model", help="the endpoint's model name, or the local model's path / hub id")
    judge.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                       help="environment variable holding the endpoint's API key (unset: no key sent)")
    judge.add_argument("--judge-correct-threshold", type=int, default=2,
                       help="an answer is judged correct when its judge score is >= this (2: 'largely correct')")
    judge.add_argument("--judge-max-failed-share", type=float, default=0.02,
                       help="stop when more than this share of the judge calls fail after their retries (a failed "
                       "call scores -1 otherwise)")
    judge.add_argument("--judge-cache", type=Path, help="reply cache file (default: <out-dir>/judge_cache.jsonl)")
    system = parser.add_argument_group("system")
    system.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    system.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    system.add_argument("--out-dir", type=Path, required=True)
    system.add_argument("--flush-every", type=int, default=64, help="examples per prediction part written")
    system.add_argument("--log-level", default="INFO")
    add_settings_argument(parser)
    return parser

def check_args(args: argparse.Namespace) -> None:
    """Every argument checked before any model is loaded; EvaluationError names the bad one."""
    if args.router_effect_limit is not None and args.router_effect_limit < 1:
        raise EvaluationError(f"--router-effect-limit must be a positive integer, got {args.router_effect_limit}")
    if args.keep_ratio is not None:
        try:
            check_keep_ratio(args.keep_ratio, "--keep-ratio")
        except ValueError as error:
            raise EvaluationError(str(error)) from error
    for name in ("manifest", "frames", "transcripts"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            raise EvaluationError(f"--{name}: file not found: {path}")
    for name in ("adapter", "cache_dir", "base_eval", "clean_eval"):
        path = getattr(args, name)
        if path is not None and not path.is_dir():
            raise EvaluationError(f"--{name.replace('_', '-')}: directory not found: {path}")
    for name in ("limit", "batch_size", "max_new_tokens", "flush_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.mode == "noise" and args.cache_dir is not None:
        raise EvaluationError("--cache-dir: noise mode replaces the pixels, so it cannot read the token cache")
    if args.mode != "noise" and (args.clean_eval or args.vision_split):
        raise EvaluationError("--clean-eval and --vision-split belong to noise mode")
    if (args.clean_eval is None) != (args.vision_split is None):
        raise EvaluationError("robustness needs both --clean-eval and --vision-split")
    if args.base_eval is not None and (args.mode != "clean" or args.no_analysis):
        raise EvaluationError("--base-eval (rank deltas) needs clean mode with analysis")
    if not 0.0 <= args.judge_max_failed_share <= 1.0:
        raise EvaluationError(f"--judge-max-failed-share must lie in [0, 1], got {args.judge_max_failed_share}")
    if args.judge == "openai" and not (args.judge_url and args.judge_model):
        raise EvaluationError("--judge openai needs --judge-url and --judge-model")
    if args.judge == "local" and not args.judge_model:
        raise EvaluationError("--judge local needs --judge-model (a path or hub id)")


def predict(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Load the model, generate (and analyse) every example not yet in the parts; the model is freed on return.

    Returns the manifest rows evaluated, their raw prediction rows (RAW_SCHEMA), the adapter's description, the
    hidden-state index of the ranks and the number of hidden states, and the part store."""
    budget = PixelBudget.from_mapping(args.pixel_budget, "--pixel-budget") if args.pixel_budget else None
    source = locked_source(args.model, args.revision, args.hub_lock, args.hub_name)
    vlm = load_vlm(source, device=str(device), dtype=dtype, revision=None if args.hub_lock else args.revision,
                   pixel_budget=budget)
    vlm.compress(args.keep_ratio)
    adapter_description = None
    if args.adapter is not None:
        try:
            vlm.load_trainable(args.adapter)
        except (FileNotFoundError, KeyError, json.JSONDecodeError) as error:
            raise EvaluationError(f"--adapter {args.adapter}: not a saved run adapter ({error})") from error
        adapter_description = json.loads((args.adapter / "moir_adapter.json").read_text())
    vlm.model.eval()
    if vlm.router is not None:
        vlm.router.eval()

    examples = load_examples(
        args.manifest, cache_dir=None if args.mode == "noise" else args.cache_dir, frames_path=args.frames,
        transcripts_path=args.transcripts, vlm=vlm, with_answer=False, limit=args.limit,
        transcript_max_tokens=args.transcript_max_tokens,
    )
    if len(examples) == 0:
        raise EvaluationError(f"{args.manifest}: no examples to evaluate")
    ids = [row["id"] for row in examples.rows]
    analysis = args.mode == "clean" and not args.no_analysis
    n_hidden = vlm.hf_model.config.get_text_config().num_hidden_layers + 1
    hidden_index = args.rank_layer if args.rank_layer >= 0 else n_hidden + args.rank_layer
    if not 0 <= hidden_index < n_hidden:
        raise EvaluationError(f"--rank-layer {args.rank_layer} is outside the {n_hidden} hidden states")

    settings = {
        "model": str(args.model), "revision": args.revision, "model_fingerprint": fingerprint(args.model),
        "adapter": str(args.adapter) if args.adapter else None,
        "adapter_fingerprint": fingerprint(args.adapter),
        "manifest_fingerprint": fingerprint(args.manifest),
        "cache_fingerprint": fingerprint(args.cache_dir) if args.mode != "noise" else None,
        "frames_fingerprint": fingerprint(args.frames),
        "transcripts_fingerprint": fingerprint(args.transcripts),
        "mode": args.mode, "noise_seed": args.noise_seed if args.mode == "noise" else None,
        "max_new_tokens": args.max_new_tokens, "analysis": analysis, "hidden_index": hidden_index if analysis else None,
        "analysis_queries": "answer-producing positions" if analysis else None,
        "rank_site": RANK_SITE if analysis else None,
        "dtype": str(dtype), "limit": args.limit,
        **{name: getattr(args, name) for name in ("pixel_budget", "transcript_max_tokens", "keep_ratio")
           if getattr(args, name)},
    }
    store = PartStore(args.out_dir, settings)
    done = store.rows()
    todo = [i for i, example_id in enumerate(ids) if example_id not in done]
    if done:
        log.info("resuming: %d of %d examples already predicted", len(ids) - len(todo), len(ids))
    pending: list[dict] = []
    with runtime.progress(total=len(ids), initial=len(ids) - len(todo), desc=f"evaluate {args.out_dir.name}") as progress:
        for start in range(0, len(todo), args.batch_size):
            indices = todo[start:start + args.batch_size]
            batch_examples = [prepare_example(examples[i], args.mode, args.noise_seed) for i in indices]
            predictions = vlm.generate(vlm.collate(batch_examples, with_answer=False), args.max_new_tokens)
            details = (analyse(vlm, batch_examples, predictions, hidden_index) if analysis
                       else [dict.fromkeys(ANALYSIS_FIELDS)] * len(indices))
            pending += [{"id": ids[i], "prediction": text, **detail}
                        for i, text, detail in zip(indices, predictions, details)]
            if len(pending) >= args.flush_every:
                store.write(pending)
                pending = []
            progress.update(len(indices))
    if pending:
        store.write(pending)
    done = store.rows()
    router_effect = None
    if args.mode == "clean" and vlm.router is not None:  # a MoIR run: what its router changes
        n_effect = len(ids) if args.router_effect_limit is None else min(args.router_effect_limit, len(ids))
        router_effect = measure_router_effect(vlm, examples[:n_effect],
                                              [done[example_id]["prediction"] for example_id in ids[:n_effect]],
                                              args.batch_size, args.max_new_tokens)
    return {
        "rows": examples.rows, "raw": [done[example_id] for example_id in ids], "analysis": analysis,
        "adapter_description": adapter_description, "hidden_index": hidden_index, "n_hidden": n_hidden,
        "store": store, "router_effect": router_effect,
    }


def evaluate(args: argparse.Namespace) -> dict:
    """The whole evaluation (module docstring); returns the metrics written to metrics.json."""
    check_args(args)
    started = time.perf_counter()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    try:
        manifest = read_manifest(args.manifest)
    except ManifestError as error:
        raise EvaluationError(str(error)) from error
    manifest_rows = manifest.to_pylist()
    if (args.mode == "no-image" and args.cache_dir is None and args.frames is None
            and any(row["media_kind"] == "video" for row in manifest_rows)):
        raise EvaluationError(f"{args.manifest}: no-image mode on videos needs --cache-dir (or --frames) to know "
                              "which videos decoded, so that it evaluates the clean evaluation's examples")
    deferred = args.judge == "defer"  # the judge stage scores the open-ended answers after this job
    needs_judge = any(protocol(row) == "open_ended" for row in manifest_rows) and not deferred
    judge = make_judge(args, needs_judge)
    base = read_evaluation(args.base_eval, needs_ranks=True) if args.base_eval else None
    clean = read_evaluation(args.clean_eval) if args.clean_eval else None
    split = read_vision_split(args.vision_split) if args.vision_split else None
    args.out_dir.mkdir(parents=True, exist_ok=True)

    predicted = predict(args, device, dtype)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows, raw, analysis = predicted["rows"], predicted["raw"], predicted["analysis"]
    hidden_index, n_hidden = predicted["hidden_index"], predicted["n_hidden"]
    ids = [row["id"] for row in rows]

    judge_name = None
    judge_cache = None
    if needs_judge:
        if isinstance(judge, str):
            judge = LocalJudge(judge, device=str(device))
        judge_name = judge.name
        judge_cache = JudgeCache(args.judge_cache or args.out_dir / "judge_cache.jsonl")
    predictions = [r["prediction"] for r in raw]
    scored = score_predictions(rows, predictions, judge, judge_cache,
                               judge_correct_threshold=args.judge_correct_threshold,
                               max_failed_share=args.judge_max_failed_share)

    metrics: dict[str, Any] = {
        "stage": "evaluate",
        "run": args.run_name or (args.adapter.name if args.adapter else "base"),
        "evaluation": args.out_dir.name,
        "mode": args.mode,
        "model": str(args.model),
        "revision": args.revision,
        "adapter": str(args.adapter) if args.adapter else None,
        "adapter_description": predicted["adapter_description"],
        "manifest": str(args.manifest),
        "dataset": rows[0]["dataset"],
        "split": rows[0]["split"],
        "n_examples": len(rows),
        "limit": args.limit,
        "inputs": {"cache_dir": str(args.cache_dir) if args.cache_dir else None,
                   "frames": str(args.frames) if args.frames else None,
                   "transcripts": str(args.transcripts) if args.transcripts else None},
        "generation": {"decoding": "greedy", "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                       "prompts": "moir.prompts (each benchmark's reference protocol)"},
        "noise": {"seed": args.noise_seed, "distribution": f"N({NOISE_MEAN}, {NOISE_STD}^2) per pixel and channel, "
                  "rounded and clipped to 0..255", "stream": "numpy default_rng([seed, sha256(example id)])"}
        if args.mode == "noise" else None,
        "accuracy": accuracy_metrics(rows, scored, judge_name, predictions, args.judge_correct_threshold),
        "judge": {"name": judge_name, "prompt": "MMBench-Video (VLMEvalKit) 0-3 judge prompt",
                  "cache": str(judge_cache.path), "correct_threshold": args.judge_correct_threshold,
                  "max_failed_share": args.judge_max_failed_share} if judge_name
        else {"deferred": True} if deferred else None,
        "dominance": dominance_metrics(raw) if analysis else None,
        "effective_rank": rank_metrics(raw, ids, hidden_index, n_hidden, base) if analysis else None,
        "robustness": None,
        "vision_split": None,
        "reliance": reliance_metrics(rows, [r["prediction"] for r in raw], scored),
        "router_effect": None if predicted["router_effect"] is None
        else router_effect_metrics(predicted["router_effect"], rows[:len(predicted["router_effect"]["tv"])],
                                   [r["prediction"] for r in raw]),
        "compression": compression_metrics(args.keep_ratio, raw),
    }
    if clean is not None:
        metrics["robustness"] = robustness_metrics(clean, split, args.vision_split, rows, scored)
    split_table = None
    if args.mode == "no-image":
        made = vision_irrelevant_split({i: item["correct"] for i, item in zip(ids, scored)})
        split_table = pa.Table.from_pylist(
            [{"id": i, "no_image_correct": item["correct"], "vision_split": made[i]} for i, item in zip(ids, scored)],
            schema=SPLIT_SCHEMA)
        metrics["vision_split"] = {
            "path": str(args.out_dir / SPLIT_FILE),
            "definition": "vision_irrelevant when this model answers correctly with the media removed",
            "n_vision_irrelevant": sum(v == "vision_irrelevant" for v in made.values()),
            "n_vision_dependent": sum(v == "vision_dependent" for v in made.values()),
        }
    metrics["summary"] = summary(metrics)
    metrics["environment"] = {"device": str(device), "dtype": str(dtype), "packages": package_versions(),
                              "wall_time_s": round(time.perf_counter() - started, 3)}

    table = pa.Table.from_pylist([{**r, **s} for r, s in zip(raw, scored)], schema=PREDICTIONS_SCHEMA)
    write_table_atomic(table, args.out_dir / PREDICTIONS_FILE)
    if split_table is not None:
        write_table_atomic(split_table, args.out_dir / SPLIT_FILE)
    write_text_atomic(args.out_dir / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    predicted["store"].remove()
    log.info("%s: accuracy %.2f over %d examples", args.out_dir, metrics["accuracy"]["value"], len(rows))
    return metrics

def compression_metrics(keep_ratio: float | None, raw: list[dict]) -> dict:
    """The keep ratio of visual-token compression (None: all tokens) and the visual tokens the language model saw
    per example with media (the analysis pass's count; None without analysis)."""
    counts = [r["n_visual"] for r in raw if r.get("n_visual")]
    return {"keep_ratio": keep_ratio, "visual_tokens_mean": statistics.fmean(counts) if counts else None,
            "n": len(counts)}


def summary(metrics: dict) -> dict:
    """The report's columns (names as in the paper's tables) from the detailed metrics."""
    dominance, rank, robust = metrics["dominance"], metrics["effective_rank"], metrics["robustness"]

    def pick(section, *keys):
        for key in keys:
            if section is None:
                return None
            section = section.get(key)
        return section

    return {
        "acc": metrics["accuracy"]["value"],
        "mdi": pick(dominance, "mdi", "all", "mean"),
        "aei": pick(dominance, "aei", "all", "mean"),
        "rank_image": pick(rank, "visual", "mean"),
        "rank_text": pick(rank, "text", "mean"),
        "rank_delta_image": pick(rank, "delta", "visual", "mean"),
        "rank_delta_text": pick(rank, "delta", "text", "mean"),
        "rank_image_input": pick(rank, "input_embeddings", "visual", "mean"),
        "rank_text_input": pick(rank, "input_embeddings", "text", "mean"),
        "rank_delta_image_input": pick(rank, "input_embeddings", "delta", "visual", "mean"),
        "rank_delta_text_input": pick(rank, "input_embeddings", "delta", "text", "mean"),
        "unchanged_all": pick(robust, "all", "unchanged_rate"),
        "unchanged_vision_dependent": pick(robust, "vision_dependent", "unchanged_rate"),
        "unchanged_vision_irrelevant": pick(robust, "vision_irrelevant", "unchanged_rate"),
        "acc_hint_right": pick(metrics.get("reliance"), "acc_hint_right"),
        "acc_hint_wrong": pick(metrics.get("reliance"), "acc_hint_wrong"),
        "hint_follow": pick(metrics.get("reliance"), "hint_follow"),
        "router_tv": pick(metrics.get("router_effect"), "tv_mean"),
        "router_changed": pick(metrics.get("router_effect"), "changed_share"),
        "visual_tokens": pick(metrics.get("compression"), "visual_tokens_mean"),
    }

def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    args.adapter = args.run  # the evaluation code's name for the LoRA run directory
    setup_logging(args.log_level)
    try:
        evaluate(args)
    except (EvaluationError, JudgeError, ManifestError, ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    cli(main)
