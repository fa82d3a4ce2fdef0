"""Atomic output: every file and directory this package writes appears complete or not at all.

A stage that dies half way (killed job, full disk, a raised error) must never leave a file that looks finished:
Snakemake and the resume logic of the encoder cache both take an existing file as done. So every writer here
writes to a hidden temporary sibling in the destination directory and renames it into place (`os.replace`,
atomic on POSIX) only once it is complete:

    write_text_atomic(path, text), write_bytes_atomic(path, data), write_json_atomic(data, path),
    write_jsonl_atomic(records, path), write_table_atomic(table, path), ParquetStreamWriter(path, schema)
    with atomic_path(path) as tmp: <anything that writes a file at tmp>         (torch.save, PIL, av, ...)
    with atomic_directory(out_dir) as tmp: <fill the directory tmp>             (a whole output directory)

A failed write (a full disk: ENOSPC, a file-size limit: EFBIG) raises an OSError whose message names the
destination, and removes the temporary file: nothing partial is left.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# The errors of writing itself (as opposed to, say, a missing input read inside an atomic block).
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES})


def _write_error(path: Path, error: OSError) -> OSError:
    """The same OSError (errno kept), its message naming the file that could not be written."""
    return OSError(error.errno, f"{path}: cannot write ({error.strerror or error}); nothing was written")


def temporary_path(path: Path) -> Path:
    """A hidden sibling of `path`, unique to this process, for writing before the final rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` to write the file at; renamed to `path` when the block exits normally, removed
    when it raises."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if error.errno in _WRITE_ERRNOS:
            raise _write_error(path, error) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling directory to fill; when the block exits normally it replaces `path` (an existing
    directory there is removed first), when it raises it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class ParquetStreamWriter:
    """Write a Parquet file row group by row group, so memory holds one batch, and publish it atomically.

    Use as a context manager: the file appears at `path` when the block exits normally; on an exception the
    temporary file is removed and nothing appears.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, **parquet_options) -> None:
        self.path = Path(path)
        self.schema = schema
        self._tmp = temporary_path(self.path)
        self._options = parquet_options
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetStreamWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = pq.ParquetWriter(self._tmp, self.schema, **self._options)
        except OSError as error:
            self._tmp.unlink(missing_ok=True)
            raise _write_error(self.path, error) from error
        return self

    def write_table(self, table: pa.Table, row_group_size: int | None = None) -> None:
        """Append `table` (this writer's schema) as row groups of at most `row_group_size` rows."""
        try:
            self._writer.write_table(table, row_group_size=row_group_size)
        except OSError as error:
            raise _write_error(self.path, error) from error

    def write_rows(self, rows: list[dict]) -> None:
        """Append `rows` (dicts keyed by column name) as one row group; an empty list writes nothing."""
        if rows:
            self.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self._writer.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        except OSError as error:
            if exc_type is None:
                raise _write_error(self.path, error) from error
        finally:
            self._tmp.unlink(missing_ok=True)


def write_table_atomic(
    table: pa.Table, path: str | os.PathLike, *, row_group_size: int | None = None, **parquet_options
) -> Path:
    """Write a whole table to `path` through a temporary file and a rename."""
    with ParquetStreamWriter(path, table.schema, **parquet_options) as writer:
        writer.write_table(table, row_group_size=row_group_size)
    return writer.path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(data: Mapping, path: str | os.PathLike) -> Path:
    """Write `data` as indented, key-sorted JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(records: Iterable[Mapping], path: str | os.PathLike) -> Path:
    """Write one key-sorted JSON object per line, atomically."""
    return write_text_atomic(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in records))
