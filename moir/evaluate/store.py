"""The evaluation's files: what it writes (schemas and names), the resumable part store the predictions go to
while it runs, and the readers of finished evaluations (a clean evaluation, a vision split), which check what
they read and name the file and the field of anything wrong."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moir.evaluate import EvaluationError
from moir.storage import write_table_atomic, write_text_atomic

log = logging.getLogger("moir.evaluate")

PREDICTIONS_FILE, METRICS_FILE, SPLIT_FILE, PARTS_DIR = (
    "predictions.parquet", "metrics.json", "vision_split.parquet", "predictions.parts"
)

RAW_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("prediction", pa.string(), nullable=False),
    pa.field("n_text", pa.int32()),
    pa.field("n_visual", pa.int32()),
    pa.field("n_answer", pa.int32()),
    pa.field("attn_text", pa.list_(pa.float64())),
    pa.field("attn_visual", pa.list_(pa.float64())),
    pa.field("erank_text", pa.float64()),
    pa.field("erank_visual", pa.float64()),
    pa.field("erank_text_input", pa.float64()),
    pa.field("erank_visual_input", pa.float64()),
])

SCORED_FIELDS = [
    pa.field("protocol", pa.string(), nullable=False),
    pa.field("normalized", pa.string(), nullable=False),
    pa.field("score", pa.float64()),
    pa.field("correct", pa.bool_(), nullable=False),
    pa.field("judge_reply", pa.string()),
]

ANALYSIS_FIELDS = [name for name in RAW_SCHEMA.names if name not in ("id", "prediction")]

PREDICTIONS_SCHEMA = pa.schema([RAW_SCHEMA.field("id"), *SCORED_FIELDS, *[f for f in RAW_SCHEMA if f.name != "id"]])

SPLIT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("no_image_correct", pa.bool_(), nullable=False),
    pa.field("vision_split", pa.string(), nullable=False),
])


class PartStore:
    """Predictions written as they are made: Parquet parts in `<out-dir>/predictions.parts/`, tagged with the
    evaluation's settings so that only a run with identical settings resumes from them."""

    def __init__(self, out_dir: Path, settings: dict) -> None:
        self.dir = out_dir / PARTS_DIR
        self.settings = settings
        settings_file = self.dir / "settings.json"
        if self.dir.exists():
            previous = json.loads(settings_file.read_text()) if settings_file.is_file() else None
            if previous != settings:
                log.warning("%s: made with other settings; discarded", self.dir)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(settings_file, json.dumps(settings, indent=2, sort_keys=True) + "\n")

    def rows(self) -> dict[str, dict]:
        done = {}
        for part in sorted(self.dir.glob("part-*.parquet")):
            try:
                table = pq.read_table(part, schema=RAW_SCHEMA)
            except (pa.ArrowInvalid, OSError) as error:
                raise EvaluationError(f"{part}: unreadable prediction part ({error}); delete it to resume") from error
            done.update((row["id"], row) for row in table.to_pylist())
        return done

    def write(self, rows: list[dict]) -> None:
        index = len(list(self.dir.glob("part-*.parquet")))
        path = self.dir / f"part-{index:06d}.parquet"
        write_table_atomic(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), path)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

def read_evaluation(directory: Path, *, needs_ranks: bool = False) -> dict:
    """A finished clean evaluation: its predictions (list of rows), metrics and directory, checked; errors name the
    file and the field. `needs_ranks`: it must hold effective ranks (clean mode with analysis)."""
    predictions_path, metrics_path = directory / PREDICTIONS_FILE, directory / METRICS_FILE
    for path in (predictions_path, metrics_path):
        if not path.is_file():
            raise EvaluationError(f"{path}: not found (is {directory} a finished evaluation?)")
    try:
        table = pq.read_table(predictions_path)
    except (pa.ArrowInvalid, OSError) as error:
        raise EvaluationError(f"{predictions_path}: not a readable Parquet file ({error})") from error
    for field in PREDICTIONS_SCHEMA:
        if field.name not in table.column_names:
            raise EvaluationError(f"{predictions_path}: missing column {field.name!r}")
        if not table.schema.field(field.name).type.equals(field.type):
            raise EvaluationError(f"{predictions_path}: column {field.name!r} has type "
                                  f"{table.schema.field(field.name).type}, expected {field.type}")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{metrics_path}: not valid JSON ({error})") from error
    if metrics.get("mode") != "clean":
        raise EvaluationError(f"{metrics_path}: field 'mode' is {metrics.get('mode')!r}, expected 'clean'")
    if needs_ranks and not metrics.get("effective_rank"):
        raise EvaluationError(f"{metrics_path}: field 'effective_rank' is empty (a base evaluation for rank deltas "
                              "needs clean mode with analysis)")
    return {"predictions": table.to_pylist(), "metrics": metrics, "directory": directory}

def read_vision_split(path: Path) -> dict[str, str]:
    """id -> "vision_dependent" | "vision_irrelevant" from a no-image evaluation's vision_split.parquet."""
    if not path.is_file():
        raise EvaluationError(f"{path}: vision split not found (run the base model's no-image evaluation first)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise EvaluationError(f"{path}: not a readable Parquet file ({error})") from error
    for name in ("id", "vision_split"):
        if name not in table.column_names:
            raise EvaluationError(f"{path}: missing column {name!r}")
    split = dict(zip(table.column("id").to_pylist(), table.column("vision_split").to_pylist()))
    bad = sorted({v for v in split.values()} - {"vision_dependent", "vision_irrelevant"})
    if bad:
        raise EvaluationError(f"{path}: column 'vision_split' has unknown value(s) {bad}")
    return split
