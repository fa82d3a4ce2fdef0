"""LLaVA-1.5 (llava-hf/llava-1.5-7b-hf, llava-1.5-13b-hf, tiny-llava): a CLIP vision tower, a two-layer MLP
projector and a Llama language model. Images only.

Seam: the CLIP layer `vision_feature_layer` (-2) with the select strategy ("default" drops the CLS token) is the
encoder output the cache stores, (576, 1024) per image at 336 px; `multi_modal_projector` maps it to visual tokens
that replace the `<image>` placeholders, the router acting in between. Positions are the language model's default
(0..L-1), exactly as in LlavaModel.forward; with visual-token compression (moir.compression) the shortened
sequence keeps contiguous positions, as FasterVLM does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from moir import compression
from moir.models.base import EncodedMedia, Example, VLMWrapper


class LlavaWrapper(VLMWrapper):
    family = "llava"

    @property
    def vision_tower(self) -> nn.Module:
        return self.hf_model.model.vision_tower

    @property
    def hidden_size(self) -> int:
        return self.hf_model.config.text_config.hidden_size

    @property
    def feature_layers(self) -> list[int]:
        layer = self.hf_model.config.vision_feature_layer
        return [layer] if isinstance(layer, int) else list(layer)

    @property
    def tokens_per_image(self) -> int:
        """576 for LLaVA-1.5: one token per patch, plus the CLS token with the "full" select strategy."""
        vision = self.hf_model.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (self.hf_model.config.vision_feature_select_strategy == "full")

    @property
    def encoder_width(self) -> int:
        return self.hf_model.config.vision_config.hidden_size * len(self.feature_layers)

    def placeholder_ids(self) -> dict[str, int]:
        return {"image": self.hf_model.config.image_token_id}

    def answer_text(self, answer: str) -> str:
        return f" {answer}{self.tokenizer.eos_token}"

    def encoder_settings(self) -> dict[str, str | int]:
        image_processor = self.processor.image_processor
        crop = image_processor.crop_size
        return {
            "feature_layer": ",".join(map(str, self.feature_layers)),
            "select_strategy": self.hf_model.config.vision_feature_select_strategy,
            "image_size": f"{crop['height']}x{crop['width']}",
            "tokens_per_image": self.tokens_per_image,
        }

    def encoder_state(self) -> dict[str, Tensor]:
        return self.vision_tower.state_dict()

    def _check_cached(self, example: Example) -> None:
        media = example.media
        expected = (self.tokens_per_image, self.encoder_width)
        if media.grid_thw is not None:
            raise ValueError(f"example {example.id}: cached features carry a grid_thw; a llava cache has none "
                             "(is it a qwen2_5_vl cache?)")
        if tuple(media.features.shape) != expected:
            raise ValueError(
                f"example {example.id}: cached image features have shape {tuple(media.features.shape)}, the model "
                f"expects {expected} (tokens per image x encoder width; vision_feature_layer="
                f"{self.hf_model.config.vision_feature_layer}, "
                f"select_strategy={self.hf_model.config.vision_feature_select_strategy!r})"
            )

    def media_inputs(self, examples: Sequence[Example]) -> tuple[dict[str, Tensor], list[int]]:
        with_media = [ex for ex in examples if ex.media_kind != "none"]
        for example in with_media:
            if example.media_kind != "image":
                raise ValueError(f"example {example.id}: llava takes images only, got a {example.media_kind!r}")
        n_visual = [self.tokens_per_image if ex.media_kind == "image" else 0 for ex in examples]
        if not with_media:
            return {}, n_visual
        cached = [ex.media is not None for ex in with_media]
        if all(cached):
            for example in with_media:
                self._check_cached(example)
            return {"image_features": torch.cat([ex.media.features.float() for ex in with_media])}, n_visual
        if any(cached):
            raise ValueError("a batch mixes cached features and pixels; build it from one or the other")
        pixels = self.processor.image_processor(images=[ex.pixels for ex in with_media], return_tensors="pt")
        return {"pixel_values": pixels["pixel_values"]}, n_visual

    def score_layer(self) -> nn.Module:
        """The CLIP encoder layer whose output is the (last) selected feature layer: the one whose [CLS] attention
        scores the visual tokens (moir.compression; FasterVLM's "[CLS] attention at the feature layer")."""
        tower = self.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers  # transformers 5: CLIPVisionModel.encoder
        index = self.feature_layers[-1] % (len(layers) + 1) - 1  # hidden_states[i] is the output of layer i - 1
        if index < 0:
            raise ValueError(f"vision_feature_layer {self.feature_layers[-1]} is the embeddings: no attention layer "
                             "scores its tokens")
        return layers[index]

    def _vision_features(self, pixel_values: Tensor, with_scores: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(n_images, tokens_per_image, encoder_width): the selected layer(s), after the select strategy; with
        `with_scores`, also (n_images, tokens_per_image) importance scores: the [CLS] attention of `score_layer`
        (recomputed from its captured input: SDPA returns no attention maps), the CLS column dropped with it."""
        tower = self.vision_tower
        scorer = self.score_layer() if with_scores else None
        with compression.capture_inputs(scorer) if scorer is not None else contextlib.nullcontext() as captured:
            outputs = tower(pixel_values.to(self.device, tower.dtype), output_hidden_states=True)
        selected = [outputs.hidden_states[layer] for layer in self.feature_layers]
        default = self.hf_model.config.vision_feature_select_strategy == "default"
        if default:
            selected = [hidden[:, 1:] for hidden in selected]
        features = torch.cat(selected, dim=-1)
        if not with_scores:
            return features
        hidden = captured["args"][0] if captured["args"] else captured["kwargs"]["hidden_states"]
        scores = compression.cls_attention(scorer, hidden)
        return features, scores[:, 1:] if default else scores

    def encoder_features(self, batch: dict[str, Tensor], kind: str) -> tuple[Tensor, None] | None:
        if "image_features" in batch:
            return batch["image_features"], None
        if "pixel_values" not in batch:
            return None
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return self._vision_features(batch["pixel_values"]).flatten(0, 1), None

    def project(self, features: Tensor, grid_thw: Tensor | None) -> Tensor:
        projector = self.hf_model.model.multi_modal_projector
        return projector(features.to(projector.linear_1.weight.dtype))

    def media_groups(self, media: EncodedMedia) -> list[int]:
        return [media.features.shape[0]]

    def language_model_inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        return {}

    def generation_inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def encode(self, examples: Sequence[Example]) -> list[EncodedMedia | None]:
        with_media = [i for i, ex in enumerate(examples) if ex.media_kind != "none"]
        encoded: list[EncodedMedia | None] = [None] * len(examples)
        if not with_media:
            return encoded
        for i in with_media:
            if examples[i].media_kind != "image":
                raise ValueError(f"example {examples[i].id}: llava takes images only, got a {examples[i].media_kind!r}")
            if examples[i].pixels is None:
                raise ValueError(f"example {examples[i].id}: no pixels to encode")
        pixels = self.processor.image_processor(images=[examples[i].pixels for i in with_media], return_tensors="pt")
        features, scores = self._vision_features(pixels["pixel_values"], with_scores=True)
        features, scores = features.float().cpu(), scores.float().cpu()
        for row, i in enumerate(with_media):
            encoded[i] = EncodedMedia(features=features[row], grid_thw=None, kind="image", scores=scores[row])
        return encoded
