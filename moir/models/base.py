"""The model adapter: one interface over LLaVA-1.5 and Qwen2.5-VL for training, evaluation and the token cache.

Why an adapter. MoIR sits at the fusion seam of a vision-language model, between the projector that turns the
vision encoder's output into language-model tokens and the language model itself, where Hugging Face code gives
no hook. The adapter rebuilds that seam from the model's own parts, in the model's own order:

    pixels --vision tower (frozen)--> encoder features          <- what the token cache stores (`encode`)
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

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin

from moir.data.manifest import MEDIA_KINDS
from moir.models.lora import PLACEMENTS, lora_target_modules
from moir.router import MoIRRouter, RouterConfig

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Stands in for the prompt while the chat template is rendered, to find where the prompt text lies.
_PROMPT_SENTINEL = "\x00moir-prompt\x00"

ADAPTER_FILE = "moir_adapter.json"
ROUTER_CONFIG_FILE = "router.json"
ROUTER_WEIGHTS_FILE = "router.safetensors"
LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class EncodedMedia:
    """The frozen vision encoder's output for one image or video: exactly what the token cache stores.

    features: (N, D_enc) float. LLaVA: the selected vision layer's patch features (after the select strategy),
    before the projector. Qwen2.5-VL: the vision transformer's output before the patch merger, one row per patch in
    raster order (each 2x2 merge group contiguous). grid_thw: (1, 3) patches along time, height, width (Qwen2.5-VL)
    or None (LLaVA). kind: "image" or "video".
    """

    features: Tensor
    grid_thw: Tensor | None
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ("image", "video"):
            raise ValueError(f"EncodedMedia.kind must be 'image' or 'video', got {self.kind!r}")
        if self.features.ndim != 2:
            raise ValueError(f"EncodedMedia.features must be (N, D_enc), got shape {tuple(self.features.shape)}")
        if self.grid_thw is not None and tuple(self.grid_thw.shape) != (1, 3):
            raise ValueError(f"EncodedMedia.grid_thw must be (1, 3) or None, got shape {tuple(self.grid_thw.shape)}")


@dataclass
class Example:
    """One question for the model. `prompt` comes from moir.prompts.build_prompt (no media placeholder in it).

    The media is either `media` (cached encoder output) or `pixels` (a PIL image, or a video as a list of HxWx3
    uint8 frames); `media_kind` is "image", "video" or "none". `fps` is the frame rate of the sampled video frames
    (Qwen2.5-VL's temporal positions depend on it); None uses the processor's default for bare frames (24).
    """

    id: str
    prompt: str
    answer: str | None
    media_kind: str
    media: EncodedMedia | None = None
    pixels: PIL.Image.Image | list[np.ndarray] | None = None
    fps: float | None = None


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


def check_model_directory(path: Path) -> None:
    """A local model directory must hold the model config, the tokenizer and the processor; name what is missing."""
    required = {
        "model config": ["config.json"],
        "tokenizer": ["tokenizer.json", "tokenizer.model"],
        "tokenizer config": ["tokenizer_config.json"],
        "processor config": ["processor_config.json", "preprocessor_config.json"],
    }
    for what, candidates in required.items():
        if not any((path / name).is_file() for name in candidates):
            raise FileNotFoundError(f"{path}: no {what} ({' or '.join(candidates)}) in the model directory")


class VLMWrapper:
    """Everything the pipeline does with a vision-language model; see the module docstring. Subclassed per family.

    Attributes: `family` ("llava" | "qwen2_5_vl"), `model` (the Hugging Face model; a PeftModel after
    `apply_lora`), `processor`, `tokenizer`, `router` (a MoIRRouter, or None when MoIR is off), `name` (the hub id
    or directory it was loaded from), `placement` (the LoRA placement, or None).
    """

    family: str = ""

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, name: str) -> None:
        self.model: nn.Module = model
        self.hf_model = model  # the Hugging Face model itself; LoRA layers are injected into it in place
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.router: MoIRRouter | None = None
        self.placement: str | None = None
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
        """Run the frozen vision encoder on each example's pixels (no grad): what the token cache stores.

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
        """What a token cache must match to be read for this model: family, vision config and weights, encoder
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
        """"image": a path (or PIL image) -> RGB PIL image. "video": a sequence of HxWx3 uint8 frames -> list."""
        if kind == "image":
            if isinstance(path_or_frames, PIL.Image.Image):
                return path_or_frames.convert("RGB")
            path = Path(path_or_frames)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: image file not found")
            try:
                with PIL.Image.open(path) as image:
                    return image.convert("RGB")
            except (PIL.UnidentifiedImageError, OSError) as error:
                raise ValueError(f"{path}: not a readable image ({error})") from error
        if kind == "video":
            if isinstance(path_or_frames, (str, os.PathLike)):
                raise ValueError(f"{path_or_frames}: give a video as its decoded frames (the media stage extracts "
                                 "them), not as a path")
            frames = [np.asarray(frame) for frame in path_or_frames]
            if not frames:
                raise ValueError("video: no frames")
            for index, frame in enumerate(frames):
                if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
                    raise ValueError(
                        f"video frame {index}: expected an HxWx3 uint8 array, got shape {frame.shape} {frame.dtype}"
                    )
            if len({frame.shape for frame in frames}) != 1:
                raise ValueError(f"video: frames differ in size: {sorted({frame.shape for frame in frames})}")
            return frames
        raise ValueError(f"media kind must be 'image' or 'video', got {kind!r}")

    # ------------------------------------------------------------------ prompts and batches

    def render_prompt(self, example: Example, n_visual_tokens: int) -> tuple[str, tuple[int, int]]:
        """The example's prompt in the family's chat template, placeholders expanded to the visual-token count,
        and the character span of the prompt text in it."""
        content: list[dict] = []
        if example.media_kind != "none":
            content.append({"type": example.media_kind})
        content.append({"type": "text", "text": _PROMPT_SENTINEL})
        rendered = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        before, after = rendered.split(_PROMPT_SENTINEL)
        if example.media_kind != "none":
            placeholder = self.tokenizer.convert_ids_to_tokens(self.placeholder_ids()[example.media_kind])
            if (before + after).count(placeholder) != 1:
                raise ValueError(f"{self.name}: the chat template must place exactly one {placeholder} per media")
            before = before.replace(placeholder, placeholder * n_visual_tokens)
            after = after.replace(placeholder, placeholder * n_visual_tokens)
        return before + example.prompt + after, (len(before), len(before) + len(example.prompt))

    def _tokenize(self, example: Example, n_visual_tokens: int, with_answer: bool) -> tuple[list[int], list[bool], int]:
        """(input ids, text mask, number of answer tokens at the end) of one example."""
        for kind, token_id in self.placeholder_ids().items():
            token = self.tokenizer.convert_ids_to_tokens(token_id)
            if token in example.prompt:
                raise ValueError(f"example {example.id}: the prompt contains the {kind} placeholder {token!r}")
        prompt_text, (start, end) = self.render_prompt(example, n_visual_tokens)
        prompt_ids = self.tokenizer(prompt_text)["input_ids"]
        if not with_answer:
            text = prompt_text
        elif example.answer is None:
            raise ValueError(f"example {example.id}: no answer to train on (answer is None)")
        else:
            text = prompt_text + self.answer_text(example.answer)
        encoding = self.tokenizer(text, return_offsets_mapping=True)
        ids = encoding["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"example {example.id}: the answer {example.answer!r} changes the tokens of the prompt before it "
                "(the tokenizer merges across the prompt/answer boundary)"
            )
        special = set(self.tokenizer.all_special_ids)
        text_mask = [
            i < len(prompt_ids) and token_id not in special and token_start < end and token_end > start
            for i, (token_id, (token_start, token_end)) in enumerate(zip(ids, encoding["offset_mapping"]))
        ]
        return ids, text_mask, len(ids) - len(prompt_ids)

    def collate(self, examples: Sequence[Example], with_answer: bool = True) -> dict[str, Tensor]:
        """Tokenise and pad a batch; see the interface in moir/models/__init__.py for the keys.

        Padding is on the right for training batches (`with_answer=True`) and on the left for generation.
        """
        if not examples:
            raise ValueError("collate: no examples")
        for example in examples:
            if example.media_kind not in MEDIA_KINDS:
                raise ValueError(f"example {example.id}: media_kind must be one of {MEDIA_KINDS}, "
                                 f"got {example.media_kind!r}")
            if example.media_kind != "none" and example.media is None and example.pixels is None:
                raise ValueError(f"example {example.id}: media_kind is {example.media_kind!r} but it has neither "
                                 "cached features (media) nor pixels")
            if example.media is not None and example.media.kind != example.media_kind:
                raise ValueError(f"example {example.id}: media_kind is {example.media_kind!r} but its cached "
                                 f"features are of a {example.media.kind!r}")
        media, n_visual = self.media_inputs(examples)
        rows = [self._tokenize(ex, n, with_answer) for ex, n in zip(examples, n_visual)]

        length = max(len(ids) for ids, _, _ in rows)
        batch_size = len(rows)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
        text_mask = torch.zeros(batch_size, length, dtype=torch.bool)
        answer_mask = torch.zeros(batch_size, length, dtype=torch.bool)
        for row, (ids, row_text_mask, n_answer) in enumerate(rows):
            span = slice(0, len(ids)) if with_answer else slice(length - len(ids), length)
            input_ids[row, span] = torch.tensor(ids)
            attention_mask[row, span] = 1
            text_mask[row, span] = torch.tensor(row_text_mask)
            answer_mask[row, span.stop - n_answer: span.stop] = n_answer > 0
        visual_mask = torch.zeros_like(text_mask)
        for token_id in self.placeholder_ids().values():
            visual_mask |= input_ids == token_id
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "text_mask": text_mask,
            "visual_mask": visual_mask,
            "answer_mask": answer_mask,
            **media,
        }
        if with_answer:
            batch["labels"] = input_ids.masked_fill(~answer_mask, IGNORE_INDEX)
        return batch

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

    def attach_router(self, config: RouterConfig) -> MoIRRouter:
        """Turn MoIR on: a fresh router (trainable gates, float32) on the model's device."""
        self.router = MoIRRouter.from_config(self.hidden_size, config).to(self.device)
        return self.router

    def apply_lora(self, placement: str, r: int = 16, alpha: int = 32, dropout: float = 0.05) -> int:
        """Wrap the placement's modules with LoRA (peft) and freeze everything else of the model.

        Returns the run's trainable parameter count (LoRA, plus the router's gates when one is attached).
        """
        if isinstance(self.model, PeftModel):
            raise ValueError(f"LoRA is already applied ({self.placement}); load a fresh adapter for another")
        targets = lora_target_modules(self.hf_model, self.family, placement)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
        training = self.hf_model.training
        with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.model = get_peft_model(self.hf_model, config)
        self.model.train(training)  # the new LoRA dropout layers follow the model's mode
        self.placement = placement
        count = self.num_trainable_parameters()
        log.info("LoRA %s (r=%d, alpha=%d) on %d modules: %d trainable parameters%s", placement, r, alpha,
                 len(targets), count, " (with the router's gates)" if self.router is not None else "")
        return count

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

    # ------------------------------------------------------------------ saving

    def save_trainable(self, directory: str | os.PathLike) -> Path:
        """Write the LoRA adapter and the router (config and gates) to `directory`, whole or not at all."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            if isinstance(self.model, PeftModel):
                self.model.save_pretrained(staging)
            if self.router is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.router.state_dict().items()},
                          staging / ROUTER_WEIGHTS_FILE)
                (staging / ROUTER_CONFIG_FILE).write_text(
                    json.dumps({"dim": self.router.dim, **self.router.config.to_dict()}, indent=2) + "\n")
            description = {"family": self.family, "base_model": self.name, "placement": self.placement,
                           "router": self.router is not None}
            (staging / ADAPTER_FILE).write_text(json.dumps(description, indent=2) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    def load_trainable(self, directory: str | os.PathLike) -> None:
        """Load what `save_trainable` wrote: LoRA weights (applied first if this adapter has none) and the router
        (attached as saved; detached when the saved run had none)."""
        directory = Path(directory)
        description_file = directory / ADAPTER_FILE
        if not description_file.is_file():
            raise FileNotFoundError(f"{directory}: not a saved adapter (no {ADAPTER_FILE})")
        description = json.loads(description_file.read_text())
        if description.get("family") != self.family:
            raise ValueError(f"{description_file}: field 'family' is {description.get('family')!r}, "
                             f"but the model is {self.family!r}")
        placement = description.get("placement")
        if placement is not None:
            if placement not in PLACEMENTS:
                raise ValueError(f"{description_file}: field 'placement' is {placement!r}, not one of {PLACEMENTS}")
            if self.placement is None:
                lora = json.loads((directory / LORA_CONFIG_FILE).read_text())
                self.apply_lora(placement, r=lora["r"], alpha=lora["lora_alpha"], dropout=lora["lora_dropout"])
            elif self.placement != placement:
                raise ValueError(f"{description_file}: LoRA placement {placement!r}, but this adapter has "
                                 f"{self.placement!r} applied")
            state = load_file(directory / LORA_WEIGHTS_FILE, device=str(self.device))
            result = set_peft_model_state_dict(self.model, state)
            if result.unexpected_keys:
                raise ValueError(f"{directory / LORA_WEIGHTS_FILE}: unexpected tensors {result.unexpected_keys[:5]}")
        if description.get("router"):
            router_config = json.loads((directory / ROUTER_CONFIG_FILE).read_text())
            dim = router_config.pop("dim")
            if dim != self.hidden_size:
                raise ValueError(f"{directory / ROUTER_CONFIG_FILE}: field 'dim' is {dim}, the model's width is "
                                 f"{self.hidden_size}")
            self.attach_router(RouterConfig(**router_config))
            self.router.load_state_dict(load_file(directory / ROUTER_WEIGHTS_FILE, device=str(self.device)))
        else:
            self.router = None
