"""The manifest: one Parquet table per (dataset, split), one schema for every dataset, real or synthetic.

Every stage after ingestion reads manifests, never a dataset's native files. The schema is checked when a
manifest is written and again when it is read; a mismatch names the file and the column.

Columns
-------
id            str         stable example id, unique within the dataset ("<dataset>/<split>/<native id>")
dataset       str         dataset name as in config.yaml (scienceqa, vizwiz, mmbench_video, synth-image, ...)
split         str         train / val / test / pretrain
question      str         the question as the dataset gives it
choices       list[str]   the options of a multiple-choice question; empty for open questions
answer_index  int32?      index into `choices` of the correct option; null for open questions
answers       list[str]   reference answer(s): one for most datasets, the 10 annotators' answers for VizWiz,
                          empty when the split's answers are private (VizWiz test)
answer_type   str?        VizWiz's answer type (yes/no, number, other, unanswerable); null elsewhere
hint          str         context/hint text shown with the question ("" when none)
media_kind    str         "image", "video" or "none"
media_path    str?        path of the image or video file, relative to the manifest's `media_root`; null for "none"
has_image     bool        ScienceQA's image subset flag (True whenever media_kind != "none")
category      str         a free-form group for per-category breakdowns ("" when none)

Table metadata: `media_root` (the directory media paths are relative to), `dataset`, `split`.

Media paths stay inside the media root: a path that is absolute or has a `..` component is refused when a
manifest is written or read (naming the row), and `resolve_media` refuses a path that a symbolic link takes
outside the root. Text columns must be valid UTF-8; an invalid value is named by column and row.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from moir.storage import write_table_atomic

MEDIA_KINDS = ("image", "video", "none")

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("choices", pa.list_(pa.string()), nullable=False),
        pa.field("answer_index", pa.int32(), nullable=True),
        pa.field("answers", pa.list_(pa.string()), nullable=False),
        pa.field("answer_type", pa.string(), nullable=True),
        pa.field("hint", pa.string(), nullable=False),
        pa.field("media_kind", pa.string(), nullable=False),
        pa.field("media_path", pa.string(), nullable=True),
        pa.field("has_image", pa.bool_(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
    ]
)


class ManifestError(ValueError):
    """A manifest does not match the schema; the message names the file and the column."""


def _check_table(table: pa.Table, source: str) -> pa.Table:
    names = set(table.column_names)
    for field in SCHEMA:
        if field.name not in names:
            raise ManifestError(f"{source}: missing column {field.name!r}")
    extra = names - set(SCHEMA.names)
    if extra:
        raise ManifestError(f"{source}: unknown column(s) {sorted(extra)}")
    table = table.select(SCHEMA.names)
    for field in SCHEMA:
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise ManifestError(
                    f"{source}: column {field.name!r} has type {column.type}, expected {field.type}"
                ) from error
            table = table.set_column(SCHEMA.get_field_index(field.name), field, column)
        if not field.nullable and column.null_count:
            raise ManifestError(f"{source}: column {field.name!r} has {column.null_count} null value(s)")
    for field in SCHEMA:
        _check_utf8(table, field.name, source)
    ids = table.column("id")
    if len(ids) != len(set(ids.to_pylist())):
        raise ManifestError(f"{source}: column 'id' has duplicate values")
    kinds = set(table.column("media_kind").to_pylist())
    if not kinds <= set(MEDIA_KINDS):
        raise ManifestError(f"{source}: column 'media_kind' has unknown value(s) {sorted(kinds - set(MEDIA_KINDS))}")
    columns = [table.column(name).to_pylist() for name in ("id", "media_kind", "media_path")]
    for row, (example_id, kind, path) in enumerate(zip(*columns)):
        if (kind == "none") != (path is None):
            raise ManifestError(f"{source}: column 'media_path' must be null exactly when media_kind is 'none'")
        if path is not None:
            problem = media_path_problem(path)
            if problem:
                raise ManifestError(f"{source}: row {row} (id {example_id!r}) column 'media_path' {path!r} {problem}")
    for index, choices in zip(table.column("answer_index").to_pylist(), table.column("choices").to_pylist()):
        if index is not None and not 0 <= index < len(choices):
            raise ManifestError(f"{source}: column 'answer_index' value {index} is outside its {len(choices)} choices")
    return table.replace_schema_metadata(table.schema.metadata)


def _check_utf8(table: pa.Table, name: str, source: str) -> None:
    """Raise ManifestError naming the column and row of the first string that is not valid UTF-8."""
    column = table.column(name)
    string_type = pa.list_(pa.string()) if pa.types.is_list(column.type) else pa.string()
    if not column.type.equals(string_type):
        return
    try:
        column.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    row = 0
    for chunk in column.chunks:
        for value in chunk:
            try:
                value.as_py()
            except UnicodeDecodeError as error:
                raise ManifestError(f"{source}: row {row} column {name!r} is not valid UTF-8 ({error.reason} at byte "
                                    f"{error.start})") from error
            row += 1
    raise ManifestError(f"{source}: column {name!r} is not valid UTF-8")


def media_path_problem(media_path: str) -> str | None:
    """Why `media_path` cannot be a path relative to a media root (absolute, `..`, empty, NUL), or None."""
    if not media_path or "\0" in media_path:
        return "is empty or holds a NUL character"
    pure = PurePosixPath(media_path.replace("\\", "/"))
    if pure.is_absolute() or media_path[1:3] == ":\\" or media_path[1:3] == ":/":
        return "is an absolute path; media paths are relative to the media root"
    if ".." in pure.parts:
        return "has a '..' component; media paths stay inside the media root"
    return None


def write_manifest(rows: list[dict] | pa.Table, path: str | os.PathLike, *, media_root: str | os.PathLike) -> Path:
    """Check `rows` against the schema and write them atomically (a temporary file, then a rename)."""
    path = Path(path)
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=SCHEMA)
    table = _check_table(table, str(path))
    datasets = set(table.column("dataset").to_pylist()) or {""}
    splits = set(table.column("split").to_pylist()) or {""}
    if len(datasets) > 1 or len(splits) > 1:
        raise ManifestError(f"{path}: a manifest holds one dataset and one split, got {sorted(datasets)} {sorted(splits)}")
    metadata = {b"media_root": str(media_root).encode(), b"dataset": datasets.pop().encode(), b"split": splits.pop().encode()}
    table = table.replace_schema_metadata(metadata)
    return write_table_atomic(table, path)


def read_manifest(path: str | os.PathLike) -> pa.Table:
    """Read and check a manifest. Raises ManifestError naming the file (and column) when it does not match."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ManifestError(f"{path}: not a readable Parquet file ({error})") from error
    metadata = table.schema.metadata or {}
    if b"media_root" not in metadata:
        raise ManifestError(f"{path}: missing table metadata 'media_root'")
    return _check_table(table, str(path)).replace_schema_metadata(metadata)


def media_root(table: pa.Table) -> Path:
    """The directory that the manifest's media paths are relative to."""
    return Path(table.schema.metadata[b"media_root"].decode())


def resolve_under(root: str | os.PathLike, media_path: str, where: str) -> Path:
    """The real path of `media_path` under `root`, refused (ManifestError naming `where`) when it leaves `root`:
    an absolute path, a `..` component, or a symbolic link that points outside."""
    problem = media_path_problem(media_path)
    if problem:
        raise ManifestError(f"{where}: media path {media_path!r} {problem}")
    root = Path(root).resolve()
    path = (root / media_path).resolve()
    if path != root and root not in path.parents:
        raise ManifestError(
            f"{where}: media path {media_path!r} resolves to {path}, outside the media root {root} (through a "
            "symbolic link); refused"
        )
    return path


def resolve_media(table: pa.Table, media_path: str) -> Path:
    """Real path of one media file of this manifest, refused (ManifestError naming the row) outside its media root."""
    metadata = table.schema.metadata or {}
    where = f"manifest of {metadata.get(b'dataset', b'?').decode()}/{metadata.get(b'split', b'?').decode()}"
    try:
        return resolve_under(media_root(table), media_path, where)
    except ManifestError as error:
        paths = table.column("media_path").to_pylist()
        rows = [row for row, path in enumerate(paths) if path == media_path]
        ids = [table.column("id")[row].as_py() for row in rows[:3]]
        raise ManifestError(f"{error} (row(s) {rows[:3]}, id(s) {ids})") from None
