"""VizWiz VQA -> manifests (train, val_heldout, val, test).

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

Validation. VizWiz's test answers are private, so the paper's protocol evaluates on the official val split; the
plateau scheduler must then not read val. Converting train also writes `val_heldout`: a seeded slice of the
official train split (HELDOUT_FRACTION of its questions: those whose sha256 of "<seed>:<image name>" ranks first),
the validation split of training; `train` is the rest. Each VizWiz image has one question, so the two share no
example and no image, and neither shares one with val. A held-out row's id and split are "val_heldout"; its image
stays under train/.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from moir.data.manifest import ManifestError, resolve_under, write_manifest

log = logging.getLogger(__name__)

DATASET = "vizwiz"
SPLITS = ("train", "val", "test")
HELDOUT = "val_heldout"  # written with train: the validation split held out of the official train split
HELDOUT_FRACTION = 0.1  # ~2,050 of train's 20,523 questions (val, the evaluation split, has 4,319)
HELDOUT_SEED = 0
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


def heldout_ids(rows: list[dict], fraction: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED) -> set[str]:
    """The ids of the train rows held out for validation: the max(1, round(fraction * n)) rows whose sha256 of
    "<seed>:<media path>" is smallest (independent of the rows' order)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie strictly between 0 and 1, got {fraction}")
    ranked = sorted(rows, key=lambda row: hashlib.sha256(f"{seed}:{row['media_path']}".encode()).hexdigest())
    return {row["id"] for row in ranked[:max(1, round(fraction * len(rows)))]}


def split_heldout(rows: list[dict], fraction: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED) -> tuple[list[dict], list[dict]]:
    """(train rows, val_heldout rows) of the official train split's rows (module docstring)."""
    held = heldout_ids(rows, fraction, seed)
    keep = [row for row in rows if row["id"] not in held]
    heldout = [{**row, "split": HELDOUT, "id": row["id"].replace("/train/", f"/{HELDOUT}/", 1)}
               for row in rows if row["id"] in held]
    if not keep or not heldout:
        raise VizWizError(f"vizwiz/train: {len(rows)} question(s) cannot be split into train and {HELDOUT} "
                          f"at fraction {fraction}")
    return keep, heldout


def convert(raw_dir: str | os.PathLike, manifest_dir: str | os.PathLike, *, splits: tuple[str, ...] = SPLITS,
            heldout_fraction: float = HELDOUT_FRACTION, heldout_seed: int = HELDOUT_SEED) -> dict[str, Path]:
    """Write `manifest_dir/<split>.parquet` for each split (train: also val_heldout, see the module docstring);
    media paths are relative to `raw_dir`."""
    raw_dir, manifest_dir = Path(raw_dir), Path(manifest_dir)
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown VizWiz split(s) {sorted(unknown)}; expected some of {SPLITS}")
    split_rows = {split: _split_rows(raw_dir, split) for split in splits}  # everything checked before any write
    if "train" in split_rows:
        split_rows["train"], split_rows[HELDOUT] = split_heldout(split_rows["train"], heldout_fraction, heldout_seed)
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
