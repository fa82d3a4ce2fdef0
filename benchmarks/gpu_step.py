"""The first thing to run on a GPU: a LoRA training step with and without MoIR, and a generation batch, at the
paper models' real sizes with random weights. One run, one table.

    python benchmarks/gpu_step.py                          # one H100/H200: all three models, full depth, < 8 min
    python benchmarks/gpu_step.py --models qwen2.5-vl --checkpoint-every-n 2
    python benchmarks/gpu_step.py --smoke --layers 1       # CPU, narrow widths: checks the script end to end

Models (moir.models.hub_configs: the hub config.json fields, random weights, bfloat16 on the GPU):
    llava-1.5-7b    32 layers x 4096, CLIP ViT-L/14-336 features: 576 visual tokens per image
    llava-1.5-13b   40 layers x 5120, the same vision features
    qwen2.5-vl      28 layers x 3584; a 16-frame video under the paper's pixel budget (moir.models.pixel_budget):
                    grid (8, 16, 30), 960 visual tokens, plus a 512-token transcript
`--layers N` keeps only the first N decoder layers (the table says how many). The tokenizer is the tiny models'
(its token ids replace the placeholder ids of the config); prompts are built to the paper datasets' lengths.

What is timed, per model: `moir.train.loop.optimizer_step` (collate from cached encoder features as training reads
them, forward, backward, clipping, AdamW) with LoRA r=16 on the attention projections and gradient checkpointing
every `--checkpoint-every-n` layers, in two variants: ft (LoRA alone) and moir (LoRA + the router at k'=0.10);
warm-up steps, then the median of --repeats. Printed: seconds per step, tokens per second, peak GPU memory, and the
MoIR overhead moir/ft. Then one greedy generation batch (--gen-batch examples, --new-tokens new tokens each; with
random weights the end-of-sequence token is practically never produced, so every sequence runs to the limit).
--out FILE also writes the rows as JSON. Models are run one after the other, memory freed between them; a model
that would start after --budget-s seconds is skipped and reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)

from moir.models import EncodedMedia, Example
from moir.models.hub_configs import hub_config
from moir.models.llava import LlavaWrapper
from moir.models.pixel_budget import PAPER_BUDGET, build_qwen_media_processors, hub_processor_settings
from moir.models.qwen2_5_vl import Qwen2_5_VLWrapper
from moir.models.tiny import LLAVA_CHAT_TEMPLATE, QWEN_CHAT_TEMPLATE, llava_tokenizer, qwen_tokenizer
from moir.router import RouterConfig
from moir.train.finetune import trainable_parameters
from moir.train.loop import optimizer_step

MODELS = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
}
QWEN_GRID = (8, 16, 30)  # 16 frames of a 16:9 video under the paper budget
SMOKE_QWEN_GRID, SMOKE_TRANSCRIPT = (2, 4, 8), 48  # --smoke: 16 visual tokens, a short transcript
SMOKE_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
WORDS = "the small red square moves to the left of the blue circle while the camera turns slowly "


def build(name: str, layers: int | None, smoke: bool, device: torch.device, dtype: torch.dtype):
    """(wrapper, examples maker) for one model: the hub architecture (narrowed when smoke), random weights."""
    config = hub_config(MODELS[name])
    text = config.text_config
    if layers is not None:
        text.num_hidden_layers = layers
    if smoke:
        for key, value in SMOKE_TEXT.items():
            setattr(text, key, value)
        text.head_dim = text.hidden_size // text.num_attention_heads
        text.vocab_size = 2048  # the tiny tokenizers' ids; a 152k-entry output layer would dominate a CPU step
        if hasattr(config, "vocab_size"):
            config.vocab_size = 2048
    if config.model_type == "llava":
        tokenizer = llava_tokenizer()
        if smoke:
            config.vision_config.hidden_size, config.vision_config.intermediate_size = 32, 64
            config.vision_config.num_hidden_layers, config.vision_config.num_attention_heads = 1, 2
        config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        config.pad_token_id = text.pad_token_id = tokenizer.pad_token_id
        settings = hub_processor_settings(MODELS[name])["image"]
        image_processor = CLIPImageProcessor(**{k: v for k, v in settings.items()
                                                if k not in ("image_processor_type", "processor_class")})
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_CHAT_TEMPLATE)
        wrapper_class, model_class = LlavaWrapper, LlavaForConditionalGeneration
    else:
        tokenizer = qwen_tokenizer()
        if smoke:
            vision = config.vision_config
            vision.hidden_size, vision.intermediate_size, vision.depth, vision.num_heads = 32, 64, 1, 2
            vision.fullatt_block_indexes = [0]
            vision.out_hidden_size = text.hidden_size
            text.rope_parameters = {**text.rope_parameters, "mrope_section": [2, 3, 3]}  # head_dim 16: 8 frequencies
        for field in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            token = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                     "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}[field]
            setattr(config, field, tokenizer.convert_tokens_to_ids(token))
        image_processor, video_processor = build_qwen_media_processors(MODELS[name], PAPER_BUDGET)
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, video_processor=video_processor,
                                        tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
        wrapper_class, model_class = Qwen2_5_VLWrapper, Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype)
    return wrapper_class(model, processor, f"{name} (random weights)")


def words(tokenizer, n_tokens: int) -> str:
    ids = tokenizer.encode(WORDS * (n_tokens // 4 + 8), add_special_tokens=False)[:n_tokens]
    return tokenizer.decode(ids)


def make_examples(wrapper, batch: int, smoke: bool = False) -> list[Example]:
    """A batch like the paper's data read from the encoder cache: ScienceQA-like image questions for LLaVA
    (about 140 text tokens + 576 visual), MMBench-Video-like videos for Qwen2.5-VL (960 visual + 512 transcript)."""
    generator = torch.Generator().manual_seed(0)
    tokenizer = wrapper.tokenizer
    examples = []
    for i in range(batch):
        if wrapper.family == "llava":
            features = torch.randn(wrapper.tokens_per_image, wrapper.encoder_width, generator=generator)
            media = EncodedMedia(features, None, "image")
            prompt = words(tokenizer, 120) + "\nAnswer with the option's letter from the given choices directly."
            examples.append(Example(f"ex{i}", prompt, "B", "image", media=media))
        else:
            grid = SMOKE_QWEN_GRID if smoke else QWEN_GRID
            width = wrapper.vision_tower.config.hidden_size
            media = EncodedMedia(torch.randn(grid[0] * grid[1] * grid[2], width, generator=generator),
                                 torch.tensor([grid]), "video")
            transcript = words(tokenizer, SMOKE_TRANSCRIPT if smoke else 512)
            prompt = f"Audio transcript: {transcript}\n{words(tokenizer, 40)}?"
            examples.append(Example(f"ex{i}", prompt, words(tokenizer, 30), "video", media=media, fps=2.0))
    return examples


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def time_steps(wrapper, examples, device, autocast, warmup: int, repeats: int) -> tuple[float, int]:
    parameters = list(trainable_parameters(wrapper).values())
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    times, tokens = [], 0
    for index in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        _, _, tokens = optimizer_step(wrapper, examples, len(examples), optimizer, parameters, 1.0, device, autocast)
        sync(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), tokens


def run_model(name: str, args, device: torch.device) -> list[dict]:
    dtype = torch.float32 if args.smoke else torch.bfloat16
    autocast = None if args.smoke else torch.bfloat16
    started = time.perf_counter()
    wrapper = build(name, args.layers, args.smoke, device, dtype)
    depth = wrapper.hf_model.config.text_config.num_hidden_layers
    build_s = time.perf_counter() - started
    examples = make_examples(wrapper, args.batch_size, args.smoke)
    wrapper.apply_lora("attn", r=16, alpha=32, dropout=0.05)
    wrapper.enable_gradient_checkpointing(every_n_layers=args.checkpoint_every_n)
    wrapper.model.train()
    rows = []
    for variant in ("ft", "moir"):
        wrapper.router = None
        if variant == "moir":
            wrapper.attach_router(RouterConfig(ratio=0.10))
        reset_peak(device)
        seconds, tokens = time_steps(wrapper, examples, device, autocast, args.warmup, args.repeats)
        rows.append({"model": name, "layers": depth, "what": f"train {variant}", "batch": len(examples),
                     "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                     "peak_gb": peak_gb(device), "build_s": build_s})
    rows[1]["moir_over_ft"] = rows[1]["seconds"] / rows[0]["seconds"]
    wrapper.router = None
    wrapper.model.eval()
    batch = wrapper.collate(make_examples(wrapper, args.gen_batch, args.smoke), with_answer=False)
    reset_peak(device)
    with torch.autocast(device.type, dtype=autocast) if autocast is not None else torch.no_grad():
        sync(device)
        start = time.perf_counter()
        wrapper.generate(batch, max_new_tokens=args.new_tokens)
        sync(device)
    seconds = time.perf_counter() - start
    new_tokens = args.gen_batch * args.new_tokens
    rows.append({"model": name, "layers": depth, "what": "generate", "batch": args.gen_batch,
                 "tokens": new_tokens, "seconds": seconds, "tokens_per_s": new_tokens / seconds,
                 "peak_gb": peak_gb(device), "prompt_tokens": int(batch["attention_mask"].sum())})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<15}{'layers':>7}  {'what':<12}{'batch':>6}{'tokens':>8}{'s':>9}{'tokens/s':>11}"
          f"{'peak GB':>9}{'moir/ft':>9}")
    for row in rows:
        peak = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f}"
        ratio = f"{row['moir_over_ft']:.3f}" if "moir_over_ft" in row else ""
        print(f"{row['model']:<15}{row['layers']:>7}  {row['what']:<12}{row['batch']:>6}{row['tokens']:>8}"
              f"{row['seconds']:>9.3f}{row['tokens_per_s']:>11.0f}{peak:>9}{ratio:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--layers", type=int, help="decoder layers to keep (default: the model's own)")
    parser.add_argument("--smoke", action="store_true", help="CPU, narrow widths, batch 2: checks the script")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--checkpoint-every-n", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no model after this many seconds")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if args.smoke:
        args.batch_size, args.gen_batch, args.new_tokens, args.warmup, args.repeats = 2, 2, 4, 0, 1
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            parser.error("no GPU: run with --smoke on a CPU")
        device = torch.device("cuda")
    started = time.perf_counter()
    rows, skipped = [], []
    for name in names:
        if time.perf_counter() - started > args.budget_s:
            skipped.append(name)
            continue
        rows.extend(run_model(name, args, device))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)"
    print(f"device: {device_name}; total {time.perf_counter() - started:.0f} s"
          + (f"; skipped (budget): {skipped}" if skipped else ""))
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps({"device": device_name, "rows": rows, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
