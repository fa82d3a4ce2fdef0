"""A restricted unpickler for data files that arrive as pickles (MMBench-Video ships its videos that way).

The stock unpickler runs whatever callables a pickle names, so unpickling a downloaded file means running the
sender's code. Here no global is ever resolved: `find_class` (the only way a pickle can reach a class or function:
GLOBAL, STACK_GLOBAL, INST and the extension-registry opcodes all go through it) always refuses, persistent ids
and out-of-band buffers are refused too, and the loaded object is then checked to hold nothing but dicts, lists and
tuples of str, bytes, int, float, bool and None. Anything else fails with UnsafePickleError naming the file.

A pickle can also be a bomb without running code: its memo lets one 1 MiB string be referenced a hundred times,
so the loaded object "holds" 100 MiB that a consumer writes out (one file per dict value) or walks. The check
counts every reference as if it were a copy: the total size of the strings and bytes (`max_bytes`, and at most
`max_ratio` times the file's size) and the number of values (`max_items`) are capped, and a container that holds
itself is refused. Every malformed pickle (whatever the unpickler raises on it) is an UnsafePickleError naming
the file.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

PLAIN_CONTAINERS = (dict, list, tuple)
PLAIN_VALUES = (str, bytes, int, float, bool, type(None))
MAX_BYTES = 4 << 30  # strings and bytes a pickle may unpack to, shared references counted each time
MAX_RATIO = 16.0  # ... and at most this many times the file's size (plain data: about 1)
MAX_ITEMS = 10_000_000  # values and containers, shared references counted each time


class UnsafePickleError(ValueError):
    """A pickle that is malformed or holds anything but plain containers of plain values."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(
            f"{self.source}: refused to load global {module}.{name}; only plain containers (dict, list, tuple) "
            f"of str/bytes/int/float/bool/None are allowed"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused a persistent id reference; only plain data is allowed")


def _check_plain(obj: object, source: str, *, max_bytes: int, max_items: int) -> None:
    """Refuse anything but plain containers of plain values, a container that holds itself, and more than
    `max_bytes` of strings/bytes or `max_items` values once every shared reference is counted as a copy.

    The expanded size of each container is computed once (post-order walk, memoised by identity), so a pickle
    that nests shared references to reach an exponential expanded size is refused in linear time."""
    sizes: dict[int, tuple[int, int]] = {}  # id(container) -> (expanded bytes, expanded items)
    on_path: set[int] = set()
    keep_alive = []  # ids stay unique only while the objects live; they all do (reachable from obj)

    def leaf(item) -> tuple[int, int] | None:
        if type(item) in (str, bytes):
            return len(item), 1
        if type(item) in PLAIN_VALUES:
            return 0, 1
        if type(item) not in PLAIN_CONTAINERS:
            raise UnsafePickleError(f"{source}: holds a {type(item).__name__}; only plain containers of plain values are allowed")
        return sizes.get(id(item))

    def children(item) -> list:
        return [*item.keys(), *item.values()] if isinstance(item, dict) else list(item)

    def check_totals(total_bytes: int, total_items: int) -> None:
        if total_bytes > max_bytes:
            raise UnsafePickleError(
                f"{source}: unpacks to more than {max_bytes} bytes of strings/bytes (shared references counted each "
                f"time); refused as a pickle bomb"
            )
        if total_items > max_items:
            raise UnsafePickleError(f"{source}: unpacks to more than {max_items} values; refused as a pickle bomb")

    if leaf(obj) is not None:
        check_totals(*leaf(obj))
        return
    stack = [(obj, False)]
    while stack:
        item, expanded = stack.pop()
        if expanded:
            on_path.discard(id(item))
            total_bytes, total_items = 0, 1
            for child in children(item):
                child_bytes, child_items = leaf(child)
                total_bytes += child_bytes
                total_items += child_items
            check_totals(total_bytes, total_items)
            sizes[id(item)] = (total_bytes, total_items)
            keep_alive.append(item)
            continue
        if id(item) in sizes:
            continue
        if id(item) in on_path:
            raise UnsafePickleError(f"{source}: a container holds itself; refused")
        on_path.add(id(item))
        stack.append((item, True))
        for child in children(item):
            if leaf(child) is None:
                if id(child) in on_path:
                    raise UnsafePickleError(f"{source}: a container holds itself; refused")
                stack.append((child, False))


def safe_load(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES, max_ratio: float = MAX_RATIO,
              max_items: int = MAX_ITEMS) -> object:
    """Unpickle `path` without resolving any global; the result holds only plain containers and values, and
    unpacks (shared references counted each time) to at most `max_bytes` and `max_ratio` x the file's size of
    strings/bytes and `max_items` values."""
    source = str(path)
    try:
        file = open(path, "rb")
    except OSError as error:
        raise UnsafePickleError(f"{source}: cannot be read ({error.strerror or error})") from error
    with file:
        size = os.fstat(file.fileno()).st_size
        try:
            obj = _RestrictedUnpickler(file, source).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # noqa: BLE001 - a malformed pickle raises anything (AttributeError, ...)
            message = str(error)[:200]
            raise UnsafePickleError(
                f"{source}: not a valid plain-data pickle ({type(error).__name__}: {message})"
            ) from error
    _check_plain(obj, source, max_bytes=min(max_bytes, int(max_ratio * max(size, 1))), max_items=max_items)
    return obj


def load_bytes_mapping(path: str | os.PathLike, **limits) -> dict[str, bytes]:
    """Unpickle a dict of name -> file bytes (MMBench-Video's `video_pkl/*.pkl`), refusing anything else.
    `limits`: those of `safe_load`."""
    obj = safe_load(path, **limits)
    if not isinstance(obj, dict):
        raise UnsafePickleError(f"{Path(path)}: expected a dict of name -> bytes, got a {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise UnsafePickleError(
                f"{Path(path)}: expected a dict of str -> bytes, found {type(key).__name__} -> {type(value).__name__} "
                f"at key {key!r:.80}"
            )
    return obj
