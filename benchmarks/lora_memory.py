"""GPU memory of a LoRA training step of LLaVA-1.5-7B at batch 8, estimated from a measurement on the CPU.

Method. The memory of a step is (a) the model's weights, (b) the trainable parameters with their gradients and
AdamW's two moment buffers, and (c) what the forward and backward passes allocate: the activations kept for the
backward pass, temporaries, gradients of activations. (a) and (b) are counted exactly from the real architecture
(built on the meta device from moir/models/hub_configs.py): bfloat16 weights, float32 LoRA (peft keeps adapters in
float32) and router gates. (c) is measured: the real LLaVA-1.5-7B decoder layers at full width (hidden 4096, MLP
11008, vocabulary 32064), bfloat16, on the CPU, through the adapter's own training path (cached CLIP features ->
projector -> MoIR router -> scatter -> Llama layers -> loss on the answer tokens; LoRA r=16 on the placement),
with a dispatch mode that follows every tensor storage the step creates and records the peak of the live bytes.
It is measured with 1 and with 2 decoder layers on one sequence of real length (576 image tokens, a text prompt
and an answer); the difference is one layer's share, the rest is the share of the embedding, projector, router,
LM head and loss. Activations grow linearly with the number of sequences and of layers (SDPA's fused kernels keep
no L x L attention map on a GPU either), so for the 32 layers at batch B:

    step memory = weights + 16 bytes x trainable + B x (rest + 32 x per_layer)

measured with and without activation checkpointing. Left out: the CUDA context (about 0.5 GiB), the caching
allocator's fragmentation and the cuBLAS/attention workspaces (typically a few percent).

    python benchmarks/lora_memory.py                       # attn placement, batch 8, 704 tokens per sequence
    python benchmarks/lora_memory.py --placement mlp --batch 8 --text-tokens 127
"""

from __future__ import annotations

import argparse
import copy
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlavaForConditionalGeneration

from moir.models.hub_configs import build_architecture, hub_config
from moir.models.llava import LlavaWrapper
from moir.models.lora import lora_target_modules
from moir.models.tiny import build_tiny_llava
from moir.router import RouterConfig

MODEL_ID = "llava-hf/llava-1.5-7b-hf"
GIB = 2 ** 30


def count_trainable(placement: str, rank: int) -> tuple[int, int]:
    """(all parameters, LoRA + router parameters) of the full architecture, counted on the meta device."""
    model = build_architecture(MODEL_ID)
    modules = dict(model.named_modules())
    lora = sum(rank * (modules[n].in_features + modules[n].out_features)
               for n in lora_target_modules(model, "llava", placement))
    router = 2 * model.config.text_config.hidden_size
    return sum(p.numel() for p in model.parameters()), lora + router


def reduced_adapter(n_layers: int, placement: str, rank: int) -> LlavaWrapper:
    """LLaVA-1.5-7B at full width with `n_layers` decoder layers (the vision tower, unused when training from the
    cache, keeps one layer), bfloat16 on the CPU, with MoIR and LoRA on."""
    config = copy.deepcopy(hub_config(MODEL_ID))
    config.text_config.num_hidden_layers = n_layers
    config.vision_config.num_hidden_layers = 1
    config.vision_feature_layer = -1
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    _, processor = build_tiny_llava(seed=0)  # collate is not used: the batch below is built directly
    adapter = LlavaWrapper(model, processor, name=f"{MODEL_ID} ({n_layers} layers)")
    adapter.attach_router(RouterConfig())
    adapter.apply_lora(placement, r=rank, alpha=2 * rank, dropout=0.05)
    return adapter


def training_batch(batch: int, text_tokens: int, answer_tokens: int) -> dict[str, torch.Tensor]:
    """Sequences laid out as LLaVA's: BOS, 576 image placeholders, the prompt, the answer (loss on the answer)."""
    generator = torch.Generator().manual_seed(0)
    image_tokens, image_token_id = 576, 32000
    length = 1 + image_tokens + text_tokens
    input_ids = torch.randint(3, 32000, (batch, length), generator=generator)
    input_ids[:, 0] = 1
    input_ids[:, 1:1 + image_tokens] = image_token_id
    visual_mask = input_ids == image_token_id
    answer_mask = torch.zeros_like(visual_mask)
    answer_mask[:, -answer_tokens:] = True
    text_mask = ~visual_mask & ~answer_mask
    text_mask[:, 0] = False
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.masked_fill(~answer_mask, -100),
        "text_mask": text_mask,
        "visual_mask": visual_mask,
        "answer_mask": answer_mask,
        "image_features": torch.randn(batch * image_tokens, 1024, generator=generator),
    }


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages that operators create while the mode is active: now, and at the peak.

    Tensors that existed before (the weights) are not counted; everything a training step allocates is:
    activations kept for the backward pass, temporaries, gradients. Views share their base's storage and count once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, weakref.ref]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(output):  # views and in-place results reuse an input's storage: not new memory
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self._track(tensor.untyped_storage())
        return output

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage.data_ptr()
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = (storage.nbytes(), weakref.ref(storage, lambda _, key=key: self._free(key)))
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        size, _ = self.live.pop(key)
        self.current -= size


def measure_step(n_layers: int, checkpointing: bool, placement: str, rank: int,
                 batch: dict[str, torch.Tensor]) -> int:
    """Peak bytes allocated by one forward+backward of the reduced model (activations, temporaries, gradients)."""
    adapter = reduced_adapter(n_layers, placement, rank)
    if checkpointing:
        adapter.enable_gradient_checkpointing()
    adapter.model.train()
    tracker = LiveTensorBytes()
    with tracker:
        adapter.forward(batch).loss.backward()
    return tracker.peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--placement", default="attn", choices=["attn", "mlp", "proj"])
    parser.add_argument("--batch", type=int, default=8, help="sequences per step in the estimate")
    parser.add_argument("--text-tokens", type=int, default=127,
                        help="prompt + answer tokens after the image (sequence = 1 + 576 + this)")
    parser.add_argument("--answer-tokens", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args(argv)

    n_params, n_trainable = count_trainable(args.placement, args.rank)
    weights = 2 * n_params
    trainable_state = 4 * 4 * n_trainable  # float32 parameter, gradient, AdamW exp_avg and exp_avg_sq
    batch = training_batch(1, args.text_tokens, args.answer_tokens)
    length = batch["input_ids"].shape[1]
    print(f"{MODEL_ID}: {n_params / 1e9:.3f} B parameters; LoRA {args.placement} r={args.rank} + router gates: "
          f"{n_trainable / 1e6:.2f} M trainable; sequence {length} tokens; estimate for batch {args.batch}")
    print(f"  weights (bfloat16)                     {weights / GIB:7.2f} GiB  (counted)")
    print(f"  trainable + grads + AdamW (float32)    {trainable_state / GIB:7.2f} GiB  (counted)")
    for checkpointing in (False, True):
        start = time.perf_counter()
        one, two = (measure_step(n, checkpointing, args.placement, args.rank, batch) for n in (1, 2))
        per_layer, rest = two - one, 2 * one - two
        n_layers = hub_config(MODEL_ID).text_config.num_hidden_layers
        activations = args.batch * (rest + n_layers * per_layer)
        total = weights + trainable_state + activations
        label = "with activation checkpointing" if checkpointing else "without checkpointing"
        print(f"  {label} (measured 1 sequence: {per_layer / 2**20:.1f} MiB per layer, "
              f"{rest / 2**20:.1f} MiB outside the layers; {time.perf_counter() - start:.0f} s)")
        print(f"    activations + temporaries, batch {args.batch}   {activations / GIB:7.2f} GiB")
        print(f"    total                                {total / GIB:7.2f} GiB  (+ CUDA context ~0.5 GiB)")


if __name__ == "__main__":
    main()
