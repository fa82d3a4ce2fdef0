"""Atomic output: every file this package writes appears complete or not at all.

A stage that dies half way (killed job, full disk, a raised error) must never leave a file that looks finished:
Snakemake and the resume logic of the token cache both take an existing file as done. So every writer here
writes to a hidden temporary file in the destination directory and renames it into place (`os.replace`, atomic
on POSIX) only after the last row group is closed. A failed write (a full disk: ENOSPC) raises an OSError whose
message names the destination, and removes the temporary file: nothing partial is left.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
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


def _write_error(path: Path, error: OSError) -> OSError:
    """The same OSError (errno kept), its message naming the file that could not be written."""
    return OSError(error.errno, f"{path}: cannot write ({error.strerror or error}); nothing was written")


def temporary_path(path: Path) -> Path:
    """A hidden sibling of `path`, unique to this process, for writing before the final rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


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
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as error:
        raise _write_error(path, error) from error
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(data: Mapping, path: str | os.PathLike) -> Path:
    """Write `data` as indented, key-sorted JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
