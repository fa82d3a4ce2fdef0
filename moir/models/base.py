"""The model wrapper (`VLMWrapper`): one interface over LLaVA-1.5 and Qwen2.5-VL for training, evaluation and
the encoder cache.

Why a wrapper. MoIR sits at the fusion seam of a vision-language model, between the projector that turns the
vision encoder's output into language-model tokens and the language model itself, where Hugging Face code gives
no hook. The wrapper rebuilds that seam from the model's own parts, in the model's own order:

    pixels --vision tower (frozen)--> encoder features          <- what the encoder cache stores (`encode`)
    encoder features --projector--> visual tokens F_A           (LLaVA: multi_modal_projector; Qwen: visual.merger)
    input_ids --embed_tokens--> text embeddings F_B
    (F_A, F_B) --MoIR router--> routed tokens                   (only when a router is attached; each modality's
                                                                valid tokens packed per example, see below)
    visual tokens scattered into the placeholder positions      (the same masked_scatter the model does)
    --language model--> logits, loss                            (the model's forward, with `inputs_embeds`)

and hands the language model the positions the unmodified model computes (LLaVA: the default ones; Qwen2.5-VL:
its own `get_rope_index` M-RoPE positions from `mm_token_type_ids` and the grids). With no router, or a router at
k' = 0, the logits and greedy generations equal the unmodified Hugging Face model's (the tests prove it), and the
cached features give the same logits as the pixels they were computed from.

The masks the router sees:
- visual (F_A's valid tokens): the image/video placeholder positions;
- text (F_B's valid tokens): the tokens of the example's prompt text only. No padding, no placeholder, no chat
  template token ("USER:", "<|im_start|>assistant", the system prompt), and never an answer token: routing the
  answer into the visual tokens would leak the label. They are the non-special tokens whose characters (the
  tokenizer's offsets) overlap the prompt's; a token may carry the template's space before the first word.

Families implement the few parts that differ (`llava.py`, `qwen2_5_vl.py`); `load_vlm` picks the family from
the model's config, for a hub id and a local `save_pretrained` directory alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin

from moir import compression
from moir.models import batching, inputs, lora, saving
from moir.models.batching import IGNORE_INDEX
from moir.models.inputs import EncodedMedia, Example, check_model_directory
from moir.router import MoIRRouter, RouterConfig

log = logging.getLogger(__name__)

__all__ = ["IGNORE_INDEX", "EncodedMedia", "Example", "VLMWrapper", "check_model_directory"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pack(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The masked tokens of each row of (B, L, D), moved to the front: (B, L_max, D) and its (B, L_max) validity.

    The router sees each modality on its own, so its input never depends on the tokens outside the masks (the
    answer, the padding) or on where in the sequence the masked tokens lie.
    """
    counts = mask.sum(1)
    valid = torch.arange(int(counts.max()), device=mask.device) < counts[:, None]
    packed = tokens.new_zeros(*valid.shape, tokens.shape[-1])
    return packed.masked_scatter(valid[..., None], tokens[mask]), valid


class VLMWrapper:
    """Everything the pipeline does with a vision-language model; see the module docstring. Subclassed per family.

    Attributes: `family` ("llava" | "qwen2_5_vl"), `model` (the Hugging Face model; a PeftModel after
    `apply_lora`), `processor`, `tokenizer`, `router` (a MoIRRouter, or None when MoIR is off), `name` (the hub id
    or directory it was loaded from), `placement` (the LoRA placement, or None).
    """

    family: str = ""
    # Visual-token compression (moir.compression): the keep ratio, or None for all tokens. Set by `compress`.
    keep_ratio: float | None = None
    rows_per_token: int = 1  # encoder-feature rows per language-model visual token (Qwen2.5-VL: the merge unit)

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, name: str) -> None:
        self.model: nn.Module = model
        self.hf_model = model  # the Hugging Face model itself; LoRA layers are injected into it in place
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.router: MoIRRouter | None = None
        self.placement: str | None = None
        # (prompt, answer, medium, visual tokens, with answer) -> token ids and masks (moir.models.batching)
        self.tokenization_memo: dict[tuple, tuple] = {}
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"{name}: the processor has no chat template (chat_template.jinja or chat_template.json)")
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is None:
            raise ValueError(f"{name}: the tokenizer has neither a pad nor an eos token to pad batches with")

    # ------------------------------------------------------------------ what each family provides

    def placeholder_ids(self) -> dict[str, int]:
        """{"image": id[, "video": id]}: the token ids that mark visual-token positions in input_ids."""
        raise NotImplementedError

    def answer_text(self, answer: str) -> str:
        """The text that follows the rendered prompt in a training sequence: the answer and the turn's end token."""
        raise NotImplementedError

    def media_inputs(self, examples: Sequence[Example]) -> tuple[dict[str, Tensor], list[int]]:
        """The batch's media tensors (cached features or processed pixels) and each example's visual-token count."""
        raise NotImplementedError

    def encoder_features(self, batch: dict[str, Tensor], kind: str) -> tuple[Tensor, Tensor | None] | None:
        """(features (N, D_enc), grid_thw or None) of the batch's `kind` media: the cached ones, or the vision
        tower run on the pixels. None when the batch has no media of that kind."""
        raise NotImplementedError

    def project(self, features: Tensor, grid_thw: Tensor | None) -> Tensor:
        """Encoder features (N, D_enc) -> visual tokens (M, D) in the language model's space (the projector)."""
        raise NotImplementedError

    def language_model_inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """Extra keyword arguments of the model's forward (positions) for a batch."""
        raise NotImplementedError

    def generation_inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """Extra keyword arguments of the model's generate for a batch."""
        raise NotImplementedError

    def encode(self, examples: Sequence[Example]) -> list[EncodedMedia | None]:
        """Run the frozen vision encoder on each example's pixels (no grad): what the encoder cache stores.

        Returns one entry per example (None for an example without media), features float32 on the CPU.
        """
        raise NotImplementedError

    def encoder_settings(self) -> dict[str, str | int]:
        """The family's encoder settings for `encoder_signature`."""
        raise NotImplementedError

    def encoder_state(self) -> dict[str, Tensor]:
        """The weights of the modules that run before the cache point (what `vision_weights` fingerprints)."""
        raise NotImplementedError

    @property
    def vision_tower(self) -> nn.Module:
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        """D: the language model's width, the router's dimension."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    def encoder_signature(self) -> dict[str, str | int]:
        """What an encoder cache must match to be read for this model: family, vision config and weights, encoder
        settings (feature layer, select strategy, image size or pixel budget) and the features' dtype."""
        config_json = json.dumps(self.vision_tower.config.to_dict(), sort_keys=True, default=str)
        weights = hashlib.sha256()
        for name, tensor in sorted(self.encoder_state().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().to("cpu", torch.float32).numpy().tobytes())
        return {
            "family": self.family,
            "vision_config": _sha(config_json),
            "vision_weights": weights.hexdigest()[:16],
            **self.encoder_settings(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "scores": compression.SCORE_DEFINITION,  # the visual-token importance scores stored with the features
        }

    def check_encoder_signature(self, signature: dict, source: str) -> None:
        """Raise ValueError naming every field in which `signature` (a cache's, read from `source`) differs."""
        expected = self.encoder_signature()
        differences = [
            f"{key}: {source} has {signature.get(key)!r}, the model needs {value!r}"
            for key, value in expected.items()
            if signature.get(key) != value
        ]
        if differences:
            raise ValueError(f"{source} does not match {self.name}: " + "; ".join(differences))

    def load_media(self, kind: str, path_or_frames: Any) -> PIL.Image.Image | list[np.ndarray]:
        """"image": a path (or PIL image) -> RGB PIL image. "video": a sequence of HxWx3 uint8 frames -> list
        (`moir.models.inputs.load_media`: the checks)."""
        return inputs.load_media(kind, path_or_frames)

    # ------------------------------------------------------------------ prompts and batches (moir.models.batching)

    def render_prompt(self, example: Example, n_visual_tokens: int) -> tuple[str, tuple[int, int]]:
        """The example's prompt in the family's chat template, placeholders expanded to the visual-token count,
        and the character span of the prompt text in it."""
        return batching.render_prompt(self, example, n_visual_tokens)

    def collate(self, examples: Sequence[Example], with_answer: bool = True) -> dict[str, Tensor]:
        """Tokenise and pad a batch; see the interface in moir/models/__init__.py for the keys.

        Padding is on the right for training batches (`with_answer=True`) and on the left for generation. With
        compression on (`compress`), the batch holds the kept visual tokens only (`compressed_batch`).
        """
        if self.keep_ratio is None:
            return self.complete_batch(batching.collate(self, examples, with_answer))
        examples = self.with_encoded_media(examples)
        return self.compressed_batch(self.complete_batch(batching.collate(self, examples, with_answer)), examples,
                                     with_answer)

    def complete_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The family's extra batch entries (Qwen2.5-VL: mm_token_type_ids)."""
        return batch

    # ------------------------------------------------------------------ visual-token compression (moir.compression)

    def compress(self, keep_ratio: float | None) -> None:
        """Keep the top `keep_ratio` share of each image's (each video frame's) visual tokens by the encoder's
        importance score from now on; None (or 1 for the same result) keeps them all."""
        self.keep_ratio = None if keep_ratio is None else compression.check_keep_ratio(keep_ratio)

    def media_groups(self, media: EncodedMedia) -> list[int]:
        """The visual-token counts of the groups selection keeps tokens in (an image; each frame of a video)."""
        raise NotImplementedError

    def full_position_ids(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Positions the language model needs computed on the uncompressed sequence (Qwen2.5-VL: M-RoPE), or None
        (LLaVA: the default contiguous positions of the shortened sequence, as FasterVLM)."""
        return None

    def with_encoded_media(self, examples: Sequence[Example]) -> list[Example]:
        """The examples with pixels replaced by their encoder output and scores (`encode`, the cache's own
        function: the vision tower is frozen), so that pixels and the cache select the same tokens."""
        pending = [i for i, ex in enumerate(examples) if ex.media_kind != "none" and ex.media is None]
        examples = list(examples)
        if pending:
            encoded = self.encode([examples[i] for i in pending])
            for i, media in zip(pending, encoded):
                examples[i] = dataclasses.replace(examples[i], media=media, pixels=None)
        return examples

    def compressed_batch(self, batch: dict[str, Tensor], examples: Sequence[Example],
                         with_answer: bool) -> dict[str, Tensor]:
        """The batch of the full examples shortened to the kept visual tokens: their placeholder positions, their
        feature rows, the positions of the full sequence (`full_position_ids`)."""
        position_ids = self.full_position_ids(batch)
        if position_ids is not None:
            batch["position_ids"] = position_ids.cpu()
        keep = torch.ones_like(batch["attention_mask"], dtype=torch.bool)
        for kind, token_id in self.placeholder_ids().items():
            with_kind = [ex for ex in examples if ex.media_kind == kind]
            if not with_kind:
                continue
            flags = []
            for example in with_kind:
                if example.media.scores is None:
                    raise ValueError(f"example {example.id}: its encoder output has no importance scores (an "
                                     "encoder cache dumped without them: dump it again)")
                flags.append(compression.keep_mask(example.media.scores, self.media_groups(example.media),
                                                   self.keep_ratio))
            flags = torch.cat(flags)
            positions = batch["input_ids"] == token_id
            features = batch[f"{kind}_features"]
            if int(positions.sum()) != flags.numel() or features.shape[0] != flags.numel() * self.rows_per_token:
                raise ValueError(f"the batch has {int(positions.sum())} {kind} placeholders, {features.shape[0]} "
                                 f"feature rows and {flags.numel()} scored {kind} tokens")
            keep[positions] = flags
            batch[f"{kind}_features"] = features.view(-1, self.rows_per_token, features.shape[-1])[flags].flatten(0, 1)
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "text_mask": False, "visual_mask": False,
                      "answer_mask": False, "query_mask": False, "labels": IGNORE_INDEX, "mm_token_type_ids": 0,
                      "position_ids": 0}
        return compression.compress_batch(batch, keep, left_pad=not with_answer, pad_values=pad_values)

    # ------------------------------------------------------------------ the seam

    def input_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """Text embeddings with the visual tokens scattered in, routed by MoIR when a router is attached."""
        device = self.device
        input_ids = batch["input_ids"].to(device)
        embeddings = self.hf_model.get_input_embeddings()(input_ids)
        for kind, token_id in self.placeholder_ids().items():
            positions = input_ids == token_id
            encoded = self.encoder_features(batch, kind)
            n_positions = int(positions.sum())
            if encoded is None:
                if n_positions:
                    raise ValueError(f"the batch has {n_positions} {kind} placeholder tokens but no {kind} media")
                continue
            tokens = self.project(encoded[0].to(device), None if encoded[1] is None else encoded[1].to(device))
            if tokens.shape[0] != n_positions:
                raise ValueError(f"the batch has {n_positions} {kind} placeholder tokens but its {kind} media give "
                                 f"{tokens.shape[0]} visual tokens")
            embeddings = embeddings.masked_scatter(positions[..., None], tokens.to(embeddings.dtype))
        visual_mask = batch["visual_mask"].to(device)
        text_mask = batch["text_mask"].to(device)
        if self.router is not None and visual_mask.any() and text_mask.any():
            visual, visual_valid = _pack(embeddings, visual_mask)
            text, text_valid = _pack(embeddings, text_mask)
            routed_visual, routed_text = self.router(visual, text, visual_valid, text_valid)
            embeddings = embeddings.masked_scatter(visual_mask[..., None], routed_visual[visual_valid])
            embeddings = embeddings.masked_scatter(text_mask[..., None], routed_text[text_valid])
        return embeddings

    def forward(self, batch: dict[str, Tensor], output_hidden_states: bool = False) -> Any:
        """The model's output (.loss when the batch has labels, .logits, .hidden_states when asked)."""
        labels = batch.get("labels")
        return self.hf_model(
            inputs_embeds=self.input_embeddings(batch),
            attention_mask=batch["attention_mask"].to(self.device),
            labels=None if labels is None else labels.to(self.device),
            output_hidden_states=output_hidden_states,
            use_cache=False,  # a teacher-forced pass never reuses keys and values (13B validation: ~5 GB kept)
            **self.language_model_inputs(batch),
        )

    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor], max_new_tokens: int = 16) -> list[str]:
        """Greedy decoding from a batch built with `with_answer=False`; the decoded new text of each example."""
        if "labels" in batch:
            raise ValueError("generate needs a batch built with collate(..., with_answer=False)")
        input_ids = batch["input_ids"].to(self.device)
        generation_config = GenerationConfig(
            do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=self.stop_token_ids(),
            pad_token_id=self.pad_token_id,
        )
        output = self.hf_model.generate(
            input_ids=input_ids,
            inputs_embeds=self.input_embeddings(batch),
            attention_mask=batch["attention_mask"].to(self.device),
            generation_config=generation_config,
            **self.generation_inputs(batch),
        )
        new_tokens = output[:, input_ids.shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    @property
    def pad_token_id(self) -> int:
        """Pads batches: the tokenizer's pad token, or its eos token when it has none."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def stop_token_ids(self) -> list[int]:
        """The tokens that end an answer: the model's generation eos tokens and the tokenizer's eos."""
        eos = self.hf_model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    # ------------------------------------------------------------------ training set-up

    @contextlib.contextmanager
    def router_off(self):
        """Within this block the model runs without its router (the LoRA weights stay): the run's model with MoIR
        switched off, for measuring what the router changes."""
        router, self.router = self.router, None
        try:
            yield self
        finally:
            self.router = router

    def attach_router(self, config: RouterConfig) -> MoIRRouter:
        """Turn MoIR on: a fresh router (trainable gates, float32) on the model's device."""
        self.router = MoIRRouter.from_config(self.hidden_size, config).to(self.device)
        return self.router

    def apply_lora(self, placement: str, r: int = 16, alpha: int = 32, dropout: float = 0.05) -> int:
        """Wrap the placement's modules with LoRA (peft) and freeze everything else of the model
        (`moir.models.lora.apply_lora`); returns the run's trainable parameter count."""
        return lora.apply_lora(self, placement, r=r, alpha=alpha, dropout=dropout)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: the model's trainable parameters and the router's gates."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.router is not None:
            params += list(self.router.parameters())
        return params

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def enable_gradient_checkpointing(self, every_n_layers: int = 1) -> None:
        """Recompute layer activations in the backward pass, every `every_n_layers`-th decoder layer (counted over
        the model's layers in order; 1: all). 7B fits with every second layer at batch 8, 13B needs all."""
        if every_n_layers < 1:
            raise ValueError(f"every_n_layers must be >= 1, got {every_n_layers}")
        self.hf_model.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=every_n_layers)
        self.hf_model.config.use_cache = False

    # ------------------------------------------------------------------ saving (moir.models.saving)

    def save_trainable(self, directory: str | os.PathLike) -> Path:
        """Write the LoRA adapter and the router (config and gates) to `directory`, whole or not at all."""
        return saving.save_trainable(self, directory)

    def write_trainable(self, directory: Path) -> None:
        """`save_trainable`'s files, written into the existing `directory` (a caller's atomic directory)."""
        saving.write_trainable(self, directory)

    def load_trainable(self, directory: str | os.PathLike) -> None:
        """Load what `save_trainable` wrote: LoRA weights (applied first if the model has none) and the router
        (attached as saved; detached when the saved run had none)."""
        saving.load_trainable(self, directory)
