"""VizWiz VQA -> manifests (train, val, test).

Input: the official release as `python -m moir.data download vizwiz` extracts it (vizwiz.org): `Annotations.zip`
-> `Annotations/{train,val,test}.json` (a top-level `{split}.json` is accepted too) and `{split}.zip` ->
`{split}/<image>`. Each annotation file is a list of {"image": "VizWiz_val_00000000.jpg", "question": ...,
"answers": [{"answer": ..., "answer_confidence": "yes" | "maybe" | "no"}, x10], "answer_type": "yes/no" |
"number" | "other" | "unanswerable", "answerable": 0 | 1}; the test split has only image and question.

Manifest fields: answers = the 10 annotators' answers as given (normalisation is the VQA metric's job), answer_type
kept, category = answer_type; test rows have no answers and a null answer_type (its answers are private). Native
id: the image name without its extension. Every image must exist; the first missing ones are named. An image
name must be a plain file name (no directory, no `..`) and its file must lie inside `raw_dir` (a symbolic link
pointing out is refused): a hostile annotation file cannot make a manifest read files elsewhere. The splits are
all read and checked before any manifest is written; a failure leaves none of this run's manifests behind.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from moir.data.manifest import ManifestError, resolve_under, write_manifest

log = logging.getLogger(__name__)

DATASET = "vizwiz"
SPLITS = ("train", "val", "test")
ANSWER_TYPES = ("yes/no", "number", "other", "unanswerable")


class VizWizError(ValueError):
    """A VizWiz file is missing or malformed; the message names the file (and the entry and field)."""


def annotation_file(raw_dir: Path, split: str) -> Path:
    for candidate in (raw_dir / "Annotations" / f"{split}.json", raw_dir / f"{split}.json"):
        if candidate.is_file():
            return candidate
    raise VizWizError(f"{raw_dir}: no annotation file for split {split!r} (looked for Annotations/{split}.json and {split}.json)")


def _row(split: str, entry: dict, position: int, source: Path) -> dict:
    where = f"{source}: entry {position}"
    if not isinstance(entry, dict):
        raise VizWizError(f"{where} is not an object")
    for field in ("image", "question"):
        if not isinstance(entry.get(field), str) or not entry[field]:
            raise VizWizError(f"{where} has no field {field!r}")
    image = entry["image"]
    if image.startswith(".") or any(c in image for c in "/\\\0") or image != image.strip():
        raise VizWizError(f"{where} field 'image' is {image!r}, not a plain file name; refused")
    answers, answer_type = [], None
    if split != "test":
        if not isinstance(entry.get("answers"), list) or not entry["answers"]:
            raise VizWizError(f"{where} ({entry['image']}) has no field 'answers'")
        for answer in entry["answers"]:
            if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
                raise VizWizError(f"{where} ({entry['image']}) field 'answers' holds {answer!r}, expected {{'answer': str, ...}}")
            answers.append(answer["answer"])
        answer_type = entry.get("answer_type")
        if answer_type not in ANSWER_TYPES:
            raise VizWizError(f"{where} ({entry['image']}) field 'answer_type' is {answer_type!r}, expected one of {ANSWER_TYPES}")
    return {
        "id": f"{DATASET}/{split}/{Path(entry['image']).stem}",
        "dataset": DATASET,
        "split": split,
        "question": entry["question"],
        "choices": [],
        "answer_index": None,
        "answers": answers,
        "answer_type": answer_type,
        "hint": "",
        "media_kind": "image",
        "media_path": f"{split}/{entry['image']}",
        "has_image": True,
        "category": answer_type or "",
    }


def convert(raw_dir: str | os.PathLike, manifest_dir: str | os.PathLike, *, splits: tuple[str, ...] = SPLITS) -> dict[str, Path]:
    """Write `manifest_dir/<split>.parquet` for each split; media paths are relative to `raw_dir`."""
    raw_dir, manifest_dir = Path(raw_dir), Path(manifest_dir)
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown VizWiz split(s) {sorted(unknown)}; expected some of {SPLITS}")
    split_rows = {split: _split_rows(raw_dir, split) for split in splits}  # everything checked before any write
    written = {}
    try:
        for split, rows in split_rows.items():
            written[split] = write_manifest(rows, manifest_dir / f"{split}.parquet", media_root=raw_dir)
            log.info("vizwiz/%s: %d questions -> %s", split, len(rows), written[split])
    except BaseException:
        for path in written.values():  # no manifest of a failed run is left to pass for a finished one
            path.unlink(missing_ok=True)
        raise
    return written


def read_json(source: Path) -> object:
    """A JSON file's content; VizWizError naming the file on bytes that are not UTF-8 or not JSON."""
    try:
        return json.loads(source.read_bytes())
    except UnicodeDecodeError as error:
        raise VizWizError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise VizWizError(f"{source}: not valid JSON ({error})") from error
    except OSError as error:
        raise VizWizError(f"{source}: cannot be read ({error.strerror or error})") from error


def _split_rows(raw_dir: Path, split: str) -> list[dict]:
    source = annotation_file(raw_dir, split)
    entries = read_json(source)
    if not isinstance(entries, list):
        raise VizWizError(f"{source}: expected a list of annotations, got a {type(entries).__name__}")
    rows = [_row(split, entry, position, source) for position, entry in enumerate(entries)]
    missing = []
    for position, row in enumerate(rows):
        try:
            path = resolve_under(raw_dir, row["media_path"], f"{source}: entry {position}")
        except ManifestError as error:
            raise VizWizError(str(error)) from None
        if not path.is_file():
            missing.append(row["media_path"])
    if missing:
        raise VizWizError(
            f"{source}: {len(missing)} image(s) not found under {raw_dir}, e.g. {missing[:5]} "
            f"(expected {split}.zip extracted to {raw_dir / split})"
        )
    return rows
