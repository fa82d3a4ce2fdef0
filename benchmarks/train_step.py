"""Training step time: with MoIR against without (the router's overhead), and from the encoder cache against
from pixels, measured in one run on the same batches with the training loop's own step function.

    python benchmarks/train_step.py                 # tiny-llava, tiny-qwen2.5-vl, LLaVA-1.5-7B widths
    python benchmarks/train_step.py --quick         # tiny models only

What is timed: `moir.train.loop.optimizer_step` on one batch (collate, forward, backward, gradient clipping,
AdamW update), LoRA on the attention projections (r=16), in three variants interleaved repeat by repeat (the
best of --repeats is reported: on a shared machine the minimum is the least disturbed measurement):
    ft      LoRA alone, the batch from the cache (encoder features, as `moir.train` reads them);
    moir    the same with the router attached (k'=0.10, both directions, the defaults);
    pixels  LoRA alone, the batch from pixels: the image processor and the frozen vision tower run every step,
            what training without the cache costs.
Ratios printed: moir / ft (the router's overhead, target < 1.02) and pixels / ft (the cache's saving).

Why the router costs more than its own arithmetic: its gates sit before the language model, so their gradient
needs the gradient of the loss with respect to the input embeddings, i.e. the backward pass must go through the
first decoder layer's frozen input projections too. With LoRA on the attention projections, plain LoRA stops one
matrix product short of that. This extra is the same at any depth, so it is a larger share of a shallow model's
step than of the real 32-layer one.

Models: the demo's tiny models (their real classes and processors), and "llava-1.5-7b-widths": LLaVA-1.5-7B's
architecture from its hub config (moir.models.hub_configs) with random weights: the full CLIP ViT-L/14-336 vision
tower (24 layers, 576 tokens of 1024 channels per image), the projector, and the language model at its real width
(4096, MLP 11008, vocabulary 32064) but only 1 and 2 decoder layers (--large-layers; the real model has 32): what
a 2-core CPU steps through in seconds. Both ratios measured there overstate their value at 32 layers, so the
script also prints them extrapolated to 32 layers: the plain LoRA step is fitted as a + b * layers from the two
depths, and the extra time of moir and of pixels (the first layer's input gradient and the router; the vision
tower) is depth-independent (the printout shows it at both depths). Images are rendered synth-image scenes at
the model's input size. Float32 on the CPU, torch's default thread count.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from moir.data.synthetic import image_example
from moir.models import Example
from moir.models.hub_configs import hub_config
from moir.models.llava import LlavaWrapper
from moir.models.qwen2_5_vl import Qwen2_5_VLWrapper
from moir.models.tiny import build_tiny_llava, build_tiny_qwen
from moir.prompts import SHORT_ANSWER_INSTRUCTION
from moir.router import RouterConfig
from moir.train.loop import optimizer_step


def tiny(name: str):
    model, processor = (build_tiny_llava if name == "tiny-llava" else build_tiny_qwen)(seed=0)
    adapter_class = LlavaWrapper if name == "tiny-llava" else Qwen2_5_VLWrapper
    return adapter_class(model, processor, name), 48


def llava_7b_widths(layers: int):
    """LLaVA-1.5-7B from its hub config with `layers` decoder layers, random weights, the tiny tokenizer."""
    _, processor = build_tiny_llava(seed=0)
    config = hub_config("llava-hf/llava-1.5-7b-hf")
    config.text_config.num_hidden_layers = layers
    config = LlavaConfig(
        vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(),
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=576,
        pad_token_id=processor.tokenizer.pad_token_id, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).float()  # the hub config says float16
    processor.image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    processor.patch_size = 14
    return LlavaWrapper(model, processor, f"llava-1.5-7b-widths ({layers} decoder layers)"), 336


def batches(adapter, image_size: int, batch_size: int) -> tuple[list[Example], list[Example]]:
    """One batch of rendered scenes with their questions, as pixels and as cached encoder features."""
    rng = np.random.default_rng(0)
    pixel_examples = []
    for i in range(batch_size):
        image, question = image_example(rng, image_size)
        pixel_examples.append(Example(f"bench-{i}", f"{question.text}\n{SHORT_ANSWER_INSTRUCTION}", question.answer,
                                      "image", pixels=image))
    encoded = adapter.encode(pixel_examples)
    cached = [Example(ex.id, ex.prompt, ex.answer, "image", media=media)
              for ex, media in zip(pixel_examples, encoded, strict=True)]
    return pixel_examples, cached


def measure(name: str, adapter, image_size: int, batch_size: int, repeats: int, warmup: int) -> dict[str, float]:
    """Best step time (s) of each variant; the variants take turns, in a rotating order, repeat by repeat."""
    pixels, cached = batches(adapter, image_size, batch_size)
    adapter.apply_lora("attn", r=16, alpha=32, dropout=0.05)
    router = adapter.attach_router(RouterConfig())
    adapter.model.train()
    parameters = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=2e-4, weight_decay=0.0)
    variants = [("ft", None, cached), ("moir", router, cached), ("pixels", None, pixels)]
    times: dict[str, list[float]] = {variant: [] for variant, _, _ in variants}
    for repeat in range(warmup + repeats):
        for variant, variant_router, examples in variants[repeat % 3:] + variants[:repeat % 3]:
            adapter.router = variant_router
            start = time.perf_counter()
            optimizer_step(adapter, examples, batch_size, optimizer, parameters, 1.0, adapter.device)
            if repeat >= warmup:
                times[variant].append(time.perf_counter() - start)
    best = {variant: min(values) for variant, values in times.items()}
    tokens = int(adapter.collate(cached)["attention_mask"].sum())
    print(f"{name:<38} {batch_size:>5} {tokens:>7} {best['ft'] * 1e3:>9.1f} {best['moir'] * 1e3:>9.1f} "
          f"{best['pixels'] * 1e3:>9.1f} {best['moir'] / best['ft']:>8.3f} {best['pixels'] / best['ft']:>10.2f}",
          flush=True)
    return best


def extrapolate(by_depth: dict[int, dict[str, float]], depth: int = 32) -> None:
    """The two measured depths fit ft(L) = a + b L; the extra time of moir and of pixels does not depend on L."""
    (l1, t1), (l2, t2) = sorted(by_depth.items())
    per_layer = (t2["ft"] - t1["ft"]) / (l2 - l1)
    ft = t1["ft"] + per_layer * (depth - l1)
    extra = {variant: sum(t[variant] - t["ft"] for t in (t1, t2)) / 2 for variant in ("moir", "pixels")}
    overhead = extra["moir"] / ft
    print(f"per decoder layer {per_layer * 1e3:.0f} ms; extra of moir {extra['moir'] * 1e3:.0f} ms "
          f"(at {l1} layer(s): {(t1['moir'] - t1['ft']) * 1e3:.0f}, at {l2}: {(t2['moir'] - t2['ft']) * 1e3:.0f}), "
          f"of pixels {extra['pixels'] * 1e3:.0f} ms")
    print(f"extrapolated to LLaVA-1.5-7B's {depth} layers: ft step {ft:.1f} s, moir/ft {1 + overhead:.3f} "
          f"(router overhead {overhead * 100:.2f}%, target < 2%: {'met' if overhead < 0.02 else 'NOT met'}), "
          f"pixels/ft {1 + extra['pixels'] / ft:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models only")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the tiny models (the paper's 8)")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per variant on the tiny models")
    parser.add_argument("--large-batch-size", type=int, default=2)
    parser.add_argument("--large-repeats", type=int, default=3)
    parser.add_argument("--large-layers", type=int, nargs=2, default=[1, 2],
                        help="the two decoder depths of the 7B-width model")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}; step times in ms, best of the repeats")
    print(f"{'model':<38} {'batch':>5} {'tokens':>7} {'ft':>9} {'moir':>9} {'pixels':>9} {'moir/ft':>8} "
          f"{'pixels/ft':>10}")
    for name in ("tiny-llava", "tiny-qwen2.5-vl"):
        adapter, size = tiny(name)
        measure(name, adapter, size, args.batch_size, args.repeats, warmup=3)
    if not args.quick:
        by_depth = {}
        for layers in args.large_layers:
            adapter, size = llava_7b_widths(layers)
            by_depth[layers] = measure(adapter.name, adapter, size, args.large_batch_size, args.large_repeats,
                                       warmup=1)
            del adapter
        extrapolate(by_depth)


if __name__ == "__main__":
    main()
