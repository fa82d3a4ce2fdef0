"""ScienceQA -> manifests (train, val, test).

Default input: the Hugging Face Parquet release `derek-thomas/ScienceQA` (what `python -m moir.data download
scienceqa` fetches, pinned in moir/data/download.py): `data/{train,validation,test}-*.parquet` with the columns
image (struct of bytes and path; null for text-only questions), question, choices, answer (index into choices),
hint, task, grade, subject, topic, category, skill, lecture, solution. The images are written out to
`images/<split>/<row>.<ext>` under the raw directory; the native id is the row's position in the split's files
(stable, since the files are pinned). It is the official data, repackaged: same questions, splits and images.

Alternative input (`source="official"`): the layout of the official release (github.com/lupantech/ScienceQA):
`problems.json` (pid -> problem with the same fields plus `image`: "image.png" or null, and `split`),
`pid_splits.json` (split -> list of pids) and `images/<split>/<pid>/image.png`. Native id: the pid.

Manifest fields: choices and answer_index from the problem, answers = [the correct choice], hint = the context
hint, media_kind image/none, has_image (the IMG subset of the accuracy metric), category = subject
(natural/social/language science).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from moir import runtime

from moir.data.manifest import write_manifest
from moir.storage import write_bytes_atomic

log = logging.getLogger(__name__)

DATASET = "scienceqa"
SPLITS = ("train", "val", "test")
HF_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
REQUIRED_FIELDS = ("question", "choices", "answer", "hint", "subject")


class ScienceQAError(ValueError):
    """A ScienceQA file is missing, unreadable or lacks a field; the message names the file and the field."""


def _row(split: str, native_id: str, problem: dict, media_path: str | None, source: str) -> dict:
    for field in REQUIRED_FIELDS:
        if field not in problem or problem[field] is None:
            raise ScienceQAError(f"{source}: problem {native_id} has no field {field!r}")
    choices = [str(choice) for choice in problem["choices"]]
    answer = int(problem["answer"])
    if not 0 <= answer < len(choices):
        raise ScienceQAError(f"{source}: problem {native_id} field 'answer' = {answer} is outside its {len(choices)} choices")
    return {
        "id": f"{DATASET}/{split}/{native_id}",
        "dataset": DATASET,
        "split": split,
        "question": problem["question"],
        "choices": choices,
        "answer_index": answer,
        "answers": [choices[answer]],
        "answer_type": None,
        "hint": problem["hint"] or "",
        "media_kind": "none" if media_path is None else "image",
        "media_path": media_path,
        "has_image": media_path is not None,
        "category": problem["subject"],
    }


def _image_suffix(data: bytes, source: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return "." + image.format.lower().replace("jpeg", "jpg")
    except UnidentifiedImageError as error:
        raise ScienceQAError(f"{source}: field 'image' holds bytes that are not an image") from error


def _write_bytes(path: Path, data: bytes) -> None:
    if path.exists() and path.stat().st_size == len(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def _hf_problems(raw_dir: Path, split: str) -> Iterator[tuple[str, dict, str]]:
    files = sorted((raw_dir / "data").glob(f"{HF_SPLIT_NAMES[split]}-*.parquet"))
    if not files:
        raise ScienceQAError(f"{raw_dir / 'data'}: no {HF_SPLIT_NAMES[split]}-*.parquet file for split {split!r}")
    index = 0
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except (OSError, ValueError) as error:
            raise ScienceQAError(f"{file}: not a readable Parquet file ({error})") from error
        missing = set(REQUIRED_FIELDS + ("image",)) - set(parquet.schema_arrow.names)
        if missing:
            raise ScienceQAError(f"{file}: missing column(s) {sorted(missing)}")
        for batch in parquet.iter_batches(batch_size=256):
            for problem in batch.to_pylist():
                yield str(index), problem, str(file)
                index += 1


def convert_hf(raw_dir: str | os.PathLike, manifest_dir: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> dict[str, Path]:
    """Convert the Hugging Face Parquet release; images go to `raw_dir/images/<split>/`."""
    raw_dir, manifest_dir = Path(raw_dir), Path(manifest_dir)
    written = {}
    for split in splits:
        rows = []
        for native_id, problem, source in runtime.progress(_hf_problems(raw_dir, split), desc=f"scienceqa/{split}", unit="problem", leave=False):
            image = problem.get("image")
            media_path = None
            if image is not None:
                data = image.get("bytes") if isinstance(image, dict) else None
                if not data:
                    raise ScienceQAError(f"{source}: row {native_id} field 'image' has no bytes")
                media_path = f"images/{split}/{native_id}{_image_suffix(data, f'{source} row {native_id}')}"
                _write_bytes(raw_dir / media_path, data)
            rows.append(_row(split, native_id, problem, media_path, source))
        written[split] = write_manifest(rows, manifest_dir / f"{split}.parquet", media_root=raw_dir)
        log.info("scienceqa/%s: %d problems (%d with an image) -> %s", split, len(rows),
                 sum(row["has_image"] for row in rows), written[split])
    return written


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError as error:
        raise ScienceQAError(f"{path}: not found") from error
    except UnicodeDecodeError as error:
        raise ScienceQAError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise ScienceQAError(f"{path}: not valid JSON ({error})") from error


def convert_official(raw_dir: str | os.PathLike, manifest_dir: str | os.PathLike,
                     splits: tuple[str, ...] = SPLITS) -> dict[str, Path]:
    """Convert the official problems.json / pid_splits.json / images/<split>/<pid>/ layout."""
    raw_dir, manifest_dir = Path(raw_dir), Path(manifest_dir)
    problems_path, splits_path = raw_dir / "problems.json", raw_dir / "pid_splits.json"
    problems, pid_splits = _read_json(problems_path), _read_json(splits_path)
    written = {}
    for split in splits:
        if split not in pid_splits:
            raise ScienceQAError(f"{splits_path}: no field {split!r}")
        rows = []
        for pid in pid_splits[split]:
            pid = str(pid)
            if pid not in problems:
                raise ScienceQAError(f"{problems_path}: no problem {pid!r} (listed in {splits_path} under {split!r})")
            problem = problems[pid]
            media_path = None
            if problem.get("image"):
                media_path = f"images/{split}/{pid}/{problem['image']}"
                if not (raw_dir / media_path).is_file():
                    raise ScienceQAError(f"{problems_path}: problem {pid} field 'image': {raw_dir / media_path} not found")
            rows.append(_row(split, pid, problem, media_path, str(problems_path)))
        written[split] = write_manifest(rows, manifest_dir / f"{split}.parquet", media_root=raw_dir)
        log.info("scienceqa/%s: %d problems -> %s", split, len(rows), written[split])
    return written


def convert(raw_dir: str | os.PathLike, manifest_dir: str | os.PathLike, *, source: str = "hf",
            splits: tuple[str, ...] = SPLITS) -> dict[str, Path]:
    """Write `manifest_dir/<split>.parquet` for each split from the `hf` (default) or `official` layout."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown ScienceQA split(s) {sorted(unknown)}; expected some of {SPLITS}")
    if source == "hf":
        return convert_hf(raw_dir, manifest_dir, splits)
    if source == "official":
        return convert_official(raw_dir, manifest_dir, splits)
    raise ValueError(f"unknown ScienceQA source {source!r}; expected 'hf' or 'official'")
