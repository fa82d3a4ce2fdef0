"""Manifest rows -> model Examples: the one place where training and evaluation get their inputs.

An Example (moir.models) carries the prompt text (`moir.prompts.build_prompt`, with the video's ASR transcript
when a transcripts table is given), the target (`moir.prompts.target_answer`, or None for generation) and the
media, either as encoder output read from the encoder cache (`cache_dir`, the normal path: the vision tower is
frozen) or as raw pixels for the model wrapper to encode (images from the manifest's media root, video frames from the
frames table of `moir.media extract`). The trainer and the evaluator both call `load_examples`, so a model is
evaluated on exactly the inputs it was trained on.

`load_examples` returns an `ExampleDataset`: a lazy sequence (a torch map-style Dataset) that reads an example's
cached features or decodes its pixels when it is indexed, so memory holds the manifest, not the media. Batches
come from `vlm.collate`:

    examples = load_examples(manifest, cache_dir=cache, vlm=vlm)
    loader = DataLoader(examples, batch_size=8, shuffle=True,
                        collate_fn=functools.partial(vlm.collate, with_answer=True))

Videos the extraction stage could not decode (listed in its errors table, so absent from the frames table and
from the cache) are left out with a warning that names them; any other media without frames or cache entry is an
error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from moir.data.manifest import read_manifest
from moir.media.pixels import MediaLoader
from moir.media.transcript_cap import cap_transcript
from moir.media.transcripts import read_transcripts
from moir.models import Example
from moir.prompts import build_prompt, target_answer
from moir.encoder_cache.cache import EncoderCache

log = logging.getLogger(__name__)


class ExampleDataset(torch.utils.data.Dataset):
    """The Examples of one manifest, built lazily on indexing (see the module docstring)."""

    def __init__(
        self,
        manifest_path: str | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
        frames_path: str | os.PathLike | None = None,
        transcripts_path: str | os.PathLike | None = None,
        vlm=None,
        with_answer: bool = True,
        limit: int | None = None,
        transcript_max_tokens: int | None = None,
    ) -> None:
        self.manifest_path = Path(manifest_path)
        manifest = read_manifest(manifest_path)
        rows = manifest.to_pylist()
        needs_media = any(row["media_kind"] != "none" for row in rows)
        if needs_media and vlm is None:
            raise ValueError(f"{manifest_path}: the examples have media; pass the model that will read them")
        self.cache = (
            EncoderCache(cache_dir, encoder=vlm.encoder_signature())
            if cache_dir is not None and needs_media
            else None
        )
        self.media = None if self.cache is not None or not needs_media else MediaLoader(manifest, frames_path, vlm)
        self.transcripts = read_transcripts(transcripts_path) if transcripts_path is not None else None
        self.with_answer = with_answer
        if transcript_max_tokens is not None and vlm is None:
            raise ValueError(f"{manifest_path}: a transcript cap in tokens needs the model wrapper's tokenizer")
        self.transcript_max_tokens = transcript_max_tokens
        self.tokenizer = vlm.tokenizer if vlm is not None else None

        kept, undecodable = [], []
        for row in rows:
            kind, path = row["media_kind"], row["media_path"]
            if kind != "none" and not self._has_media(kind, path):
                undecodable.append(row["id"])
                continue
            if self.transcripts is not None and kind == "video" and path not in self.transcripts:
                raise ValueError(f"{transcripts_path}: no transcript for video {path!r} (example {row['id']})")
            kept.append(row)
        if undecodable:
            log.warning(
                "%s: left out %d example(s) whose video could not be decoded: %s",
                manifest_path,
                len(undecodable),
                ", ".join(undecodable[:10]) + (" ..." if len(undecodable) > 10 else ""),
            )
        self.rows = kept[:limit] if limit is not None else kept

    def _has_media(self, kind: str, media_path: str) -> bool:
        if self.cache is None:
            return self.media.available(kind, media_path)
        if media_path in self.cache:
            return True
        if media_path in self.cache.missing:
            return False
        raise ValueError(f"{self.cache.dir}: the encoder cache has no entry for {media_path!r} of {self.manifest_path}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self.example(row) for row in self.rows[index]]
        return self.example(self.rows[index])

    def __iter__(self) -> Iterator[Example]:
        return (self.example(row) for row in self.rows)

    def example(self, row: dict) -> Example:
        """The Example of one manifest row."""
        kind, path = row["media_kind"], row["media_path"]
        transcript = self.transcripts.get(path) if self.transcripts is not None and kind == "video" else None
        if transcript and self.transcript_max_tokens is not None:
            transcript = cap_transcript(transcript, tokenizer=self.tokenizer, max_tokens=self.transcript_max_tokens)
        media = pixels = fps = None
        if self.cache is not None and kind != "none":
            media = self.cache.get(path)
            fps = self.cache.video_fps(path) if kind == "video" else None
        elif kind != "none":
            pixels = self.media.pixels(kind, path)
            fps = self.media.video_fps(path) if kind == "video" else None
        return Example(
            id=row["id"],
            prompt=build_prompt(row, transcript=transcript),
            answer=target_answer(row) if self.with_answer else None,
            media_kind=kind,
            media=media,
            pixels=pixels,
            fps=fps,
        )


def load_examples(
    manifest_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    frames_path: str | os.PathLike | None = None,
    transcripts_path: str | os.PathLike | None = None,
    vlm=None,
    with_answer: bool = True,
    limit: int | None = None,
    transcript_max_tokens: int | None = None,
) -> ExampleDataset:
    """The Examples of a manifest (module docstring): cached encoder output when `cache_dir` is given, else pixels.

    `vlm` is required when the examples have media: the cache is checked against its encoder signature, and
    pixels are loaded with its `load_media`. `limit` keeps the first N examples (smoke runs).
    `transcript_max_tokens` caps each ASR transcript to that many of the model's tokens (moir.media.transcript_cap).
    """
    return ExampleDataset(
        manifest_path,
        cache_dir=cache_dir,
        frames_path=frames_path,
        transcripts_path=transcripts_path,
        vlm=vlm,
        with_answer=with_answer,
        limit=limit,
        transcript_max_tokens=transcript_max_tokens,
    )
