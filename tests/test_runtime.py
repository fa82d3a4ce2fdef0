"""`moir.runtime` (fingerprints, the command-line wrapper) and `moir.storage`'s atomic file and directory writers."""

from __future__ import annotations

import pytest

from moir.runtime import cli, fingerprint
from moir.storage import atomic_directory, atomic_path, write_jsonl_atomic


def test_fingerprint_follows_contents_and_names_not_the_machine(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        (root / "sub").mkdir(parents=True)
        (root / "meta.json").write_text('{"a": 1}')
        (root / "sub" / "shard.bin").write_bytes(b"\x00" * 100)
    assert fingerprint(one) == fingerprint(two)  # same relative names and bytes, another place
    (two / "sub" / "shard.bin").write_bytes(b"\x01" * 100)  # same size, other bytes
    assert fingerprint(one) != fingerprint(two)
    (two / "sub" / "shard.bin").write_bytes(b"\x00" * 100)
    (two / "sub" / "shard.bin").rename(two / "sub" / "other.bin")
    assert fingerprint(one) != fingerprint(two)
    # above the full-hash limit a file counts by its name and size only
    (two / "sub" / "shard.bin").write_bytes(b"\x01" * 100)
    assert fingerprint(one / "sub" / "shard.bin") != fingerprint(two / "sub" / "shard.bin")
    assert fingerprint(one / "sub" / "shard.bin", full_hash_limit=10) == fingerprint(
        two / "sub" / "shard.bin", full_hash_limit=10)
    assert fingerprint(None) is None and fingerprint(tmp_path / "org/hub-id") is None


def test_cli_prints_one_line_for_a_known_error_and_the_traceback_on_request(capsys, monkeypatch):
    def main():
        raise ValueError("data/x.parquet: field 'id'\nis missing")

    monkeypatch.delenv("MOIR_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli(main)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: data/x.parquet: field 'id' is missing\n"
    monkeypatch.setenv("MOIR_DEBUG", "1")
    with pytest.raises(ValueError, match="field 'id'"):  # the traceback: the error itself propagates
        cli(main)


def test_cli_exits_with_mains_status_and_keeps_the_traceback_of_a_bug():
    with pytest.raises(SystemExit) as exit_info:
        cli(lambda: 3)
    assert exit_info.value.code == 3
    with pytest.raises(SystemExit) as exit_info:
        cli(lambda: None)
    assert exit_info.value.code == 0
    with pytest.raises(KeyError):  # not a known error: a bug, raised as is
        cli(lambda: {}["missing"])


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "run"
    with atomic_directory(out) as staging:
        (staging / "a.txt").write_text("first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with pytest.raises(RuntimeError), atomic_directory(out) as staging:
        (staging / "a.txt").write_text("second")
        raise RuntimeError("killed half way")
    assert (out / "a.txt").read_text() == "first"  # the old directory stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # and no temporary sibling is left
    with atomic_directory(out) as staging:
        (staging / "b.txt").write_text("replaced")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.pt"
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []
    write_jsonl_atomic([{"b": 1, "a": 2}, {"c": 3}], target)
    assert target.read_text() == '{"a": 2, "b": 1}\n{"c": 3}\n'
    assert list(tmp_path.iterdir()) == [target]
