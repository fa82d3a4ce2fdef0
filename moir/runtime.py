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
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

import torch

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Files up to this size are hashed whole; a larger one (a hub-sized weight shard, pinned by its revision) by its size.
FULL_HASH_LIMIT = 256 << 20
DEFAULT_PACKAGES = ("moir", "torch", "transformers", "peft", "numpy", "pyarrow")


# ---------------------------------------------------------------------------------------------- device and dtype


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on a GPU, float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak resident memory of this process (GiB) and, on a GPU, peak allocated device memory (GiB)."""
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    gpu_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peak_rss_gib": round(rss_gib, 3), "peak_gpu_allocated_gib": None if gpu_gib is None else round(gpu_gib, 3)}


# ---------------------------------------------------------------------------------------------- logging


def setup_logging(level: str | int = "INFO") -> None:
    """The one logging set-up of every stage: `LOG_FORMAT` on stderr at `level`."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)


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
