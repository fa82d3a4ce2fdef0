"""What every stage shares about the machine it runs on: device and dtype, logging, package versions, input
fingerprints, and the command-line wrapper that turns a known error into one line.

    from moir import runtime
    device = runtime.resolve_device("auto")            # cuda when available, else cpu
    dtype = runtime.resolve_dtype("auto", device)      # bfloat16 on a GPU, float32 on the CPU
    runtime.setup_logging("INFO")                      # one format for every stage
    runtime.fingerprint("data/manifests/x/test.parquet")   # sha256 of a file's or a directory's contents

and in a stage's `__main__.py`:

    if __name__ == "__main__":
        runtime.cli(main)

and around a stage's loop:

    for item in runtime.progress(items, desc="encoder cache", unit="item"):   # or: with runtime.progress(total=n) as bar
        ...

`progress` is a tqdm bar on a terminal; when stderr is not one (a Snakemake job writes it to its log file) it writes
one plain line every 10% of the total or every 60 s instead of carriage-return redraws that would pile up on one
line of the log.

`cli` runs `main` and exits with its status. A known error (one of the project's own error classes, or a
ValueError / OSError, whose messages name the file and the field) prints one line `error: ...` on stderr and exits
1; with MOIR_DEBUG=1 the full traceback is printed instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    import torch

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Files up to this size are hashed whole; a larger one (a hub-sized weight shard, pinned by its revision) by its size.
FULL_HASH_LIMIT = 256 << 20
DEFAULT_PACKAGES = ("moir", "torch", "transformers", "peft", "numpy", "pyarrow")


# ---------------------------------------------------------------------------------------------- device and dtype


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    import torch  # torch is imported where a stage needs it: the data and media stages run without it

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on a GPU, float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak resident memory of this process (GiB) and, on a GPU, peak allocated device memory (GiB)."""
    import torch

    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    gpu_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peak_rss_gib": round(rss_gib, 3), "peak_gpu_allocated_gib": None if gpu_gib is None else round(gpu_gib, 3)}


# ---------------------------------------------------------------------------------------------- logging


def setup_logging(level: str | int = "INFO") -> None:
    """The one logging set-up of every stage: `LOG_FORMAT` on stderr at `level`."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)


# ---------------------------------------------------------------------------------------------- progress


def progress(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
             unit: str = "it", unit_scale: bool = False, leave: bool = True, stream: IO[str] | None = None,
             every_percent: float = 10.0, every_seconds: float = 60.0, **bar_options: Any):
    """Progress of a loop, for a person: on a terminal (`stream`, default stderr, is a TTY) a tqdm bar; otherwise a
    `LineProgress` writing one line every `every_percent` of the total or `every_seconds`. Both iterate over
    `iterable`, and have update(n), set_postfix(**values) and close() and work as context managers."""
    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if stream.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave,
                    file=stream, **bar_options)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                        stream=stream, every_percent=every_percent, every_seconds=every_seconds)


class LineProgress:
    """`progress` for a log file: a line at the start, whenever another `every_percent` of the total is done or
    `every_seconds` have passed since the last line, and at the end:

        2026-11-30 08:40:01 progress train synth-image: 120/300 step (40%), 2.10 step/s, elapsed 0:57, left ~1:25, loss=0.41
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
                 desc: str = "", unit: str = "it", unit_scale: bool = False, stream: IO[str] | None = None,
                 every_percent: float = 10.0, every_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.iterable, self.total, self.n, self.initial = iterable, total, initial, initial
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        self.stream = sys.stderr if stream is None else stream
        self.every_percent, self.every_seconds, self.clock = every_percent, every_seconds, clock
        self.postfix = ""
        self.started = self.last_time = clock()
        self.last_n: int | None = None
        self.closed = False
        self.write()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress: nothing to iterate over (pass an iterable, or call update)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        due = now - self.last_time >= self.every_seconds
        if self.total and self.last_n is not None:
            step = self.total * self.every_percent / 100
            due = due or int(self.n / step) > int(self.last_n / step)
        if due:
            self.write(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n != self.last_n:
                self.write()

    def amount(self, n: float) -> str:
        return tqdm.format_sizeof(n) if self.unit_scale else f"{n:g}"

    def write(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        elapsed = now - self.started
        text = f"{self.amount(self.n)}"
        if self.total:
            text += f"/{self.amount(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        done = self.n - self.initial
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            rate_text = tqdm.format_sizeof(rate) if self.unit_scale else f"{rate:.2f}" if rate < 100 else f"{rate:.0f}"
            text += f", {rate_text} {self.unit}/s, elapsed {tqdm.format_interval(elapsed)}"
            if self.total and self.n < self.total:
                text += f", left ~{tqdm.format_interval((self.total - self.n) * elapsed / done)}"
        if self.postfix:
            text += f", {self.postfix}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.stream.write(f"{stamp} progress {self.desc + ': ' if self.desc else ''}{text}\n")
        self.stream.flush()
        self.last_time, self.last_n = now, self.n


# ---------------------------------------------------------------------------------------------- provenance


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict:
    """Python's and each named package's installed version (None when it is not installed)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint(path: str | os.PathLike | None, full_hash_limit: int = FULL_HASH_LIMIT) -> str | None:
    """sha256 identifying a file's or a directory's contents; None for no input or a path that does not exist
    (a hub id, whose revision is its identity).

    Every file (sorted by its path relative to `path`) contributes its relative path, its size and, when it is at
    most `full_hash_limit` bytes, its contents. The same bytes give the same fingerprint on every machine."""
    if path is None or not Path(path).exists():
        return None
    root = Path(path)
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        name = file.name if file == root else file.relative_to(root).as_posix()
        size = file.stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        if size <= full_hash_limit:
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- the command line


def is_known_error(error: BaseException) -> bool:
    """An error whose message is the whole story: the project's own error classes, ValueError and OSError."""
    return isinstance(error, (ValueError, OSError)) or type(error).__module__.split(".")[0] == "moir"


def cli(main: Callable[[], int | None]) -> None:
    """Run a stage's `main()` and exit with its status; a known error is one line `error: ...` and status 1
    (MOIR_DEBUG=1: the full traceback)."""
    try:
        status = main()
    except Exception as error:  # noqa: BLE001 - sorted into known (one line) and bugs (traceback) below
        if os.environ.get("MOIR_DEBUG") == "1" or not is_known_error(error):
            raise
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
