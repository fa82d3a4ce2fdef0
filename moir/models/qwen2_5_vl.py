"""Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct, tiny-qwen2.5-vl): a windowed vision transformer at native
resolution, a patch merger (2x2 patches -> one token) and a Qwen2 language model with M-RoPE. Images and videos.

Seam: the cache stores what enters the merger, the vision transformer's last hidden states, one row per patch,
put back from the window order the transformer works in into raster order (each 2x2 merge group contiguous), with
the grid (t, h, w) in patches. `visual.merger` maps them to the visual tokens that replace the `<|image_pad|>` /
`<|video_pad|>` placeholders, the router acting in between. The merger works on groups of four consecutive rows,
so merging raster-ordered rows gives exactly the rows the model computes (it merges in window order, then
reorders). Positions: the model's own `get_rope_index` on input_ids, `mm_token_type_ids` (0 text, 1 image,
2 video) and the grids, as Qwen2_5_VLModel.forward computes them; the token count is unchanged by MoIR, so are the
positions. With visual-token compression (moir.compression) they are computed on the full sequence and the kept
tokens keep theirs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers.vision_utils import get_vision_window_index

from moir import compression
from moir.models.base import EncodedMedia, Example, VLMWrapper
from moir.models.pixel_budget import PixelBudget, process_videos

# Qwen's video processor assumes this frame rate for bare frames (transformers.video_utils.VideoMetadata).
DEFAULT_FPS = 24.0


class Qwen2_5_VLWrapper(VLMWrapper):
    family = "qwen2_5_vl"
    # set by load_vlm(pixel_budget=...): its per-video limit applies per call (process_videos); None: the
    # processor's own limits
    pixel_budget: PixelBudget | None = None

    @property
    def vision_tower(self) -> nn.Module:
        return self.hf_model.model.visual

    @property
    def hidden_size(self) -> int:
        return self.hf_model.config.text_config.hidden_size

    @property
    def merge_unit(self) -> int:
        return self.hf_model.config.vision_config.spatial_merge_size ** 2

    def placeholder_ids(self) -> dict[str, int]:
        config = self.hf_model.config
        return {"image": config.image_token_id, "video": config.video_token_id}

    def answer_text(self, answer: str) -> str:
        return f"{answer}<|im_end|>"

    def encoder_settings(self) -> dict[str, str | int]:
        image, video = self.processor.image_processor, self.processor.video_processor
        settings = {
            "patch_size": image.patch_size,
            "temporal_patch_size": image.temporal_patch_size,
            "merge_size": image.merge_size,
            "image_pixels": f"{image.size['shortest_edge']}-{image.size['longest_edge']}",
            "video_pixels": f"{video.size['shortest_edge']}-{video.size['longest_edge']}",
        }
        if self.pixel_budget is not None and self.pixel_budget.video_total_pixels is not None:
            settings["video_total_pixels"] = self.pixel_budget.video_total_pixels
        return settings

    def encoder_state(self) -> dict[str, Tensor]:
        """The vision transformer without its merger: the merger runs after the cache point (and LoRA's `proj`
        placement wraps it, which must not invalidate the cache)."""
        return {name: tensor for name, tensor in self.vision_tower.state_dict().items()
                if not name.startswith("merger.")}

    def _check_cached(self, example: Example) -> None:
        media = example.media
        if media.grid_thw is None:
            raise ValueError(f"example {example.id}: cached features have no grid_thw; a qwen2_5_vl cache needs the "
                             "grid (is it a llava cache?)")
        t, h, w = (int(x) for x in media.grid_thw[0])
        merge = self.hf_model.config.vision_config.spatial_merge_size
        width = self.vision_tower.config.hidden_size
        if h % merge or w % merge or (media.kind == "image" and t != 1):
            raise ValueError(f"example {example.id}: cached grid_thw {(t, h, w)} is not a valid {media.kind} grid "
                             f"for spatial merge size {merge}")
        if tuple(media.features.shape) != (t * h * w, width):
            raise ValueError(
                f"example {example.id}: cached {media.kind} features have shape {tuple(media.features.shape)}, the "
                f"grid {(t, h, w)} and the vision width need {(t * h * w, width)}"
            )

    def media_inputs(self, examples: Sequence[Example]) -> tuple[dict[str, Tensor], list[int]]:
        with_media = [ex for ex in examples if ex.media_kind != "none"]
        if not with_media:
            return {}, [0] * len(examples)
        cached = [ex.media is not None for ex in with_media]
        if any(cached) and not all(cached):
            raise ValueError("a batch mixes cached features and pixels; build it from one or the other")
        inputs: dict[str, Tensor] = {}
        grids: dict[str, list[Tensor]] = {"image": [], "video": []}
        if all(cached):
            for kind in ("image", "video"):
                items = [ex for ex in with_media if ex.media_kind == kind]
                for example in items:
                    self._check_cached(example)
                if items:
                    inputs[f"{kind}_features"] = torch.cat([ex.media.features.float() for ex in items])
                    grids[kind] = [ex.media.grid_thw.long() for ex in items]
        else:
            images = [ex.pixels for ex in with_media if ex.media_kind == "image"]
            videos = [np.stack(ex.pixels) for ex in with_media if ex.media_kind == "video"]
            if images:
                processed = self.processor.image_processor(images=images, return_tensors="pt")
                inputs["pixel_values"] = processed["pixel_values"]
                grids["image"] = list(processed["image_grid_thw"].split(1))
            if videos:
                processed = process_videos(self.processor.video_processor, videos, self.pixel_budget)
                inputs["pixel_values_videos"] = processed["pixel_values_videos"]
                grids["video"] = list(processed["video_grid_thw"].split(1))
        for kind in ("image", "video"):
            if grids[kind]:
                inputs[f"{kind}_grid_thw"] = torch.cat(grids[kind])
        videos_in_batch = [ex for ex in with_media if ex.media_kind == "video"]
        if videos_in_batch:
            temporal_patch = self.processor.video_processor.temporal_patch_size
            inputs["second_per_grid_ts"] = torch.tensor(
                [temporal_patch / (ex.fps or DEFAULT_FPS) for ex in videos_in_batch], dtype=torch.float32
            )
        n_visual, counters = [], {"image": 0, "video": 0}
        for example in examples:
            if example.media_kind == "none":
                n_visual.append(0)
                continue
            grid = grids[example.media_kind][counters[example.media_kind]]
            counters[example.media_kind] += 1
            n_visual.append(int(grid.prod()) // self.merge_unit)
        return inputs, n_visual

    @property
    def rows_per_token(self) -> int:
        return self.merge_unit

    def complete_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        batch["mm_token_type_ids"] = torch.tensor(self.processor.create_mm_token_type_ids(batch["input_ids"]))
        return batch

    def media_groups(self, media: EncodedMedia) -> list[int]:
        """One group per temporal patch group (an image: one), of (h * w / merge unit) tokens."""
        t, h, w = (int(x) for x in media.grid_thw[0])
        return [h * w // self.merge_unit] * t

    def full_position_ids(self, batch: dict[str, Tensor]) -> Tensor:
        """The M-RoPE positions (3, B, L) of the uncompressed batch: a kept token keeps its position."""
        return self._rope_positions(batch)

    def score_block(self) -> nn.Module:
        """The last full-attention vision block: the attention its patches receive scores the visual tokens."""
        visual = self.vision_tower
        return visual.blocks[visual.fullatt_block_indexes[-1] % len(visual.blocks)]

    def _vision_features(self, pixel_values: Tensor, grid_thw: Tensor,
                         with_scores: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(patches, vision width): the vision transformer's output before the merger, in raster order; with
        `with_scores`, also (patches / merge unit,) importance scores in the same order (moir.compression: the mean
        attention each patch receives within its frame at `score_block`, averaged over its merge group)."""
        visual = self.vision_tower
        grid_thw = grid_thw.to(self.device)
        block = self.score_block() if with_scores else None
        with compression.capture_inputs(block) if block is not None else contextlib.nullcontext() as captured:
            hidden = visual(pixel_values.to(self.device, visual.dtype), grid_thw=grid_thw).last_hidden_state
        window_index, _ = get_vision_window_index(
            grid_thw, visual.spatial_merge_size, visual.window_size, visual.patch_size
        )
        raster = torch.argsort(window_index.to(hidden.device))
        features = hidden.view(-1, self.merge_unit, hidden.shape[-1])[raster].view(-1, hidden.shape[-1])
        if not with_scores:
            return features
        args, kwargs = captured["args"], captured["kwargs"]
        block_input = args[0] if args else kwargs["hidden_states"]
        received = compression.received_attention(block, block_input, kwargs["cu_seqlens"],
                                                  kwargs["position_embeddings"])
        return features, received.view(-1, self.merge_unit).mean(1)[raster]

    def encoder_features(self, batch: dict[str, Tensor], kind: str) -> tuple[Tensor, Tensor] | None:
        grid = batch.get(f"{kind}_grid_thw")
        if f"{kind}_features" in batch:
            return batch[f"{kind}_features"], grid
        pixel_key = "pixel_values" if kind == "image" else "pixel_values_videos"
        if pixel_key not in batch:
            return None
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return self._vision_features(batch[pixel_key], grid), grid

    def project(self, features: Tensor, grid_thw: Tensor | None) -> Tensor:
        merger = self.vision_tower.merger
        return merger(features.to(merger.mlp[0].weight.dtype))

    def _position_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        names = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")
        return {name: batch[name].to(self.device) for name in names if name in batch}

    def _rope_positions(self, batch: dict[str, Tensor]) -> Tensor:
        position_ids, _ = self.hf_model.model.get_rope_index(
            batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
            **self._position_inputs(batch),
        )
        return position_ids

    def language_model_inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """The M-RoPE positions (3, B, L) the unmodified model computes for this batch; a compressed batch carries
        those of its full sequence (`position_ids`)."""
        if "position_ids" in batch:
            return {"position_ids": batch["position_ids"].to(self.device)}
        return {"position_ids": self._rope_positions(batch)}

    def generation_inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """generate computes the positions itself from these, as for the unmodified model. A compressed batch
        gives them explicitly: (4, B, L), the text positions generate would use (row 0) and the full sequence's
        M-RoPE positions; generate extends each row by one per new token, as the model's own rope deltas do."""
        if "position_ids" in batch:
            mask = batch["attention_mask"].to(self.device)
            text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            return {"position_ids": torch.cat([text[None], batch["position_ids"].to(self.device)])}
        return self._position_inputs(batch)

    @torch.no_grad()
    def encode(self, examples: Sequence[Example]) -> list[EncodedMedia | None]:
        encoded: list[EncodedMedia | None] = [None] * len(examples)
        for example in examples:
            if example.media_kind != "none" and example.pixels is None:
                raise ValueError(f"example {example.id}: no pixels to encode")
        for kind in ("image", "video"):
            indices = [i for i, ex in enumerate(examples) if ex.media_kind == kind]
            if not indices:
                continue
            if kind == "image":
                processed = self.processor.image_processor(
                    images=[examples[i].pixels for i in indices], return_tensors="pt"
                )
                pixel_values, grid = processed["pixel_values"], processed["image_grid_thw"]
            else:
                processed = process_videos(
                    self.processor.video_processor, [np.stack(examples[i].pixels) for i in indices], self.pixel_budget
                )
                pixel_values, grid = processed["pixel_values_videos"], processed["video_grid_thw"]
            features, scores = self._vision_features(pixel_values, grid, with_scores=True)
            features, scores = features.float().cpu(), scores.float().cpu()
            sizes = grid.prod(-1)
            for i, item_features, item_scores, item_grid in zip(
                    indices, features.split(sizes.tolist()), scores.split((sizes // self.merge_unit).tolist()),
                    grid.split(1)):
                encoded[i] = EncodedMedia(features=item_features, grid_thw=item_grid.clone(), kind=kind,
                                          scores=item_scores)
        return encoded
