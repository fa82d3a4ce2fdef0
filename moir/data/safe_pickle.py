"""A restricted unpickler for data files that arrive as pickles (MMBench-Video ships its videos that way).

The stock unpickler runs whatever callables a pickle names, so unpickling a downloaded file means running the
sender's code. Here no global is ever resolved: `find_class` (the only way a pickle can reach a class or function:
GLOBAL, STACK_GLOBAL, INST and the extension-registry opcodes all go through it) always refuses, persistent ids
and out-of-band buffers are refused too, and the loaded object is then checked to hold nothing but dicts, lists and
tuples of str, bytes, int, float, bool and None. Anything else fails with UnsafePickleError naming the file.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

PLAIN_CONTAINERS = (dict, list, tuple)
PLAIN_VALUES = (str, bytes, int, float, bool, type(None))


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


def _check_plain(obj: object, source: str) -> None:
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if type(item) in PLAIN_VALUES:
            continue
        if type(item) not in PLAIN_CONTAINERS:
            raise UnsafePickleError(f"{source}: holds a {type(item).__name__}; only plain containers of plain values are allowed")
        if id(item) in seen:
            continue
        seen.add(id(item))
        stack.extend(item.keys() if isinstance(item, dict) else ())
        stack.extend(item.values() if isinstance(item, dict) else item)


def safe_load(path: str | os.PathLike) -> object:
    """Unpickle `path` without resolving any global; the result holds only plain containers and values."""
    source = str(path)
    with open(path, "rb") as file:
        try:
            obj = _RestrictedUnpickler(file, source).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, MemoryError) as error:
            raise UnsafePickleError(f"{source}: not a valid plain-data pickle ({type(error).__name__}: {error})") from error
    _check_plain(obj, source)
    return obj


def load_bytes_mapping(path: str | os.PathLike) -> dict[str, bytes]:
    """Unpickle a dict of name -> file bytes (MMBench-Video's `video_pkl/*.pkl`), refusing anything else."""
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise UnsafePickleError(f"{Path(path)}: expected a dict of name -> bytes, got a {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise UnsafePickleError(
                f"{Path(path)}: expected a dict of str -> bytes, found {type(key).__name__} -> {type(value).__name__} "
                f"at key {key!r:.80}"
            )
    return obj
