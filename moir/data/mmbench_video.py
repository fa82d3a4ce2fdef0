"""MMBench-Video -> manifests (train, val, test split by video).

Input: the Hugging Face repository `opencompass/MMBench-Video` as `python -m moir.data download mmbench_video`
fetches it: `MMBench-Video.tsv` (one question per row; columns `index`, `video`, `video_type`, `question`,
`answer`, `dimensions` (a Python-literal list of ability names, e.g. "['Counting']"), `video_path`) and
`video_pkl/video_chunk_<i>.pkl`, each a pickled dict of video name -> MP4 bytes. The pickles are opened with
moir.data.safe_pickle (never the stock unpickler) and written out as `video/<name>.mp4`; a video already there
with the right size is kept, so an interrupted unpacking resumes. One chunk (up to ~1.9 GB) is in memory at a time.

Splits. The benchmark has a single (test) split of ~2k questions on ~600 videos; fine-tuning needs a train split,
which the paper does not describe. We split by video, so that no video appears in two splits: a video goes to
test / val / train by sha256(f"{seed}:{video}") against `test_fraction` and `val_fraction`; the same seed gives
the same split whatever the row order.

Manifest fields: answers = [answer] (open-ended; a judge scores predictions), media_kind video,
media_path `video/<video>.mp4`, category = the ability dimensions joined by "; ". Native id: the TSV's `index`.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import logging
import os
from pathlib import Path

from moir import runtime

from moir.data.manifest import write_manifest
from moir.data.safe_pickle import load_bytes_mapping
from moir.storage import write_bytes_atomic

log = logging.getLogger(__name__)

DATASET = "mmbench_video"
SPLITS = ("train", "val", "test")
TSV_NAME = "MMBench-Video.tsv"
REQUIRED_COLUMNS = ("index", "video", "question", "answer")


class MMBenchVideoError(ValueError):
    """An MMBench-Video file is missing or malformed; the message names the file, row and column."""


def unpack_videos(pickle_dir: str | os.PathLike, video_dir: str | os.PathLike) -> int:
    """Write every video of `pickle_dir/*.pkl` to `video_dir/<name>.mp4`; returns the number of videos."""
    pickle_dir, video_dir = Path(pickle_dir), Path(video_dir)
    chunks = sorted(pickle_dir.glob("*.pkl"))
    if not chunks:
        raise MMBenchVideoError(f"{pickle_dir}: no *.pkl video chunks")
    video_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for chunk in runtime.progress(chunks, desc="unpack video_pkl", unit="chunk", leave=False):
        for name, data in load_bytes_mapping(chunk).items():
            if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
                raise MMBenchVideoError(f"{chunk}: video name {name!r} is not a plain file name; refused")
            target = video_dir / f"{name}.mp4"
            count += 1
            if target.exists() and target.stat().st_size == len(data):
                continue
            write_bytes_atomic(target, data)
        log.info("%s: unpacked, %d videos so far", chunk, count)
    return count


def split_of(video: str, *, seed: int, val_fraction: float, test_fraction: float) -> str:
    """The split a video belongs to: a seeded hash of its name, compared with the fractions."""
    unit = int.from_bytes(hashlib.sha256(f"{seed}:{video}".encode()).digest()[:8], "big") / 2**64
    if unit < test_fraction:
        return "test"
    if unit < test_fraction + val_fraction:
        return "val"
    return "train"


def read_questions(tsv: Path) -> list[dict]:
    """The TSV's rows, checked: UTF-8, the required columns are present and non-empty, `dimensions` parses."""
    if not tsv.is_file():
        raise MMBenchVideoError(f"{tsv}: not found")
    data = tsv.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise MMBenchVideoError(
            f"{tsv}: line {line} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from error
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    missing = set(REQUIRED_COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise MMBenchVideoError(f"{tsv}: missing column(s) {sorted(missing)}")
    rows = []
    for line, row in enumerate(reader, start=2):
        for column in REQUIRED_COLUMNS:
            if not (row.get(column) or "").strip():
                raise MMBenchVideoError(f"{tsv}: line {line} has an empty {column!r}")
        dimensions = []
        if (row.get("dimensions") or "").strip():
            try:
                dimensions = ast.literal_eval(row["dimensions"])
            except (ValueError, SyntaxError) as error:
                raise MMBenchVideoError(f"{tsv}: line {line} column 'dimensions' is not a list literal") from error
            if not isinstance(dimensions, list) or not all(isinstance(d, str) for d in dimensions):
                raise MMBenchVideoError(f"{tsv}: line {line} column 'dimensions' is not a list of strings")
        rows.append({**row, "dimensions": dimensions})
    ids = [row["index"] for row in rows]
    if len(ids) != len(set(ids)):
        raise MMBenchVideoError(f"{tsv}: column 'index' has duplicate values")
    return rows


def convert(raw_dir: str | os.PathLike, manifest_dir: str | os.PathLike, *, seed: int = 0,
            val_fraction: float = 0.1, test_fraction: float = 0.3) -> dict[str, Path]:
    """Unpack the videos (if needed) and write `manifest_dir/{train,val,test}.parquet`."""
    raw_dir, manifest_dir = Path(raw_dir), Path(manifest_dir)
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction <= 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum <= 1; got {val_fraction}, {test_fraction}")
    tsv = raw_dir / TSV_NAME
    questions = read_questions(tsv)
    unpack_videos(raw_dir / "video_pkl", raw_dir / "video")
    missing = sorted({q["video"] for q in questions if not (raw_dir / "video" / f"{q['video']}.mp4").is_file()})
    if missing:
        raise MMBenchVideoError(f"{tsv}: {len(missing)} video(s) named in column 'video' are in no video_pkl chunk, e.g. {missing[:5]}")
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for q in questions:
        split = split_of(q["video"], seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
        rows[split].append({
            "id": f"{DATASET}/{split}/{q['index']}",
            "dataset": DATASET,
            "split": split,
            "question": q["question"],
            "choices": [],
            "answer_index": None,
            "answers": [q["answer"]],
            "answer_type": None,
            "hint": "",
            "media_kind": "video",
            "media_path": f"video/{q['video']}.mp4",
            "has_image": True,
            "category": "; ".join(q["dimensions"]),
        })
    written = {}
    for split in SPLITS:
        written[split] = write_manifest(rows[split], manifest_dir / f"{split}.parquet", media_root=raw_dir)
        log.info("mmbench_video/%s: %d questions on %d videos -> %s", split, len(rows[split]),
                 len({row["media_path"] for row in rows[split]}), written[split])
    return written
