"""`moir.runtime` (fingerprints, the command-line wrapper, progress lines in log files) and `moir.storage`'s atomic file and directory writers."""

from __future__ import annotations

import io
import re

import pytest

from moir.runtime import LineProgress, cli, fingerprint, progress
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


class FakeClock:
    """A clock the test moves by hand (no sleeping, no timing asserts)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_file_writes_whole_lines_every_10_percent():
    log = io.StringIO()  # not a TTY, like a Snakemake job's log file
    for _ in progress(range(50), desc="train synth-image", unit="step", stream=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 1 + 10  # the start, then one line per 10% (the last one at 100%)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d progress train synth-image: 0/50 step \(0%\)", lines[0])
    assert " progress train synth-image: 5/50 step (10%), " in lines[1] and ", left ~" in lines[1]
    assert " progress train synth-image: 50/50 step (100%), " in lines[-1] and "left" not in lines[-1]


def test_progress_in_a_log_file_also_writes_every_minute_and_shows_the_postfix():
    log, clock = io.StringIO(), FakeClock()
    bar = LineProgress(total=1000, initial=90, desc="evaluate", unit="question", stream=log, clock=clock)  # resumed
    clock.now = 30.0
    bar.update(20)  # 9% -> 11%: crosses 10%, a line
    clock.now = 59.0
    bar.update(1)  # neither 10% more nor 60 s since the last line
    clock.now = 91.0
    bar.set_postfix(loss="0.4100")
    bar.update(1)  # 61 s since the last line
    bar.close()
    bar.close()  # a second close writes nothing
    lines = log.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("progress evaluate: 90/1000 question (9%)")
    # rates and time left count only this session's 20 questions in 30 s: 890 left at 0.67/s
    assert lines[1].endswith("evaluate: 110/1000 question (11%), 0.67 question/s, elapsed 00:30, left ~22:15")
    assert lines[2].endswith("evaluate: 112/1000 question (11%), 0.24 question/s, elapsed 01:31, left ~1:01:13, "
                             "loss=0.4100")


def test_progress_without_a_total_and_on_a_terminal():
    log = io.StringIO()
    with progress(total=None, desc="transcripts", unit="video", stream=log) as bar:
        bar.update(3)
    first, last = log.getvalue().splitlines()
    assert first.endswith("progress transcripts: 0 video") and "%" not in last  # no total, no percentage
    assert re.search(r"progress transcripts: 3 video, [\d.]+ video/s, elapsed \d\d:\d\d$", last)
    terminal = Terminal()
    bar = progress(range(3), desc="cache", stream=terminal)
    assert not isinstance(bar, LineProgress)  # a tqdm bar, which redraws its line in place
    list(bar)
    assert "\r" in terminal.getvalue() and "cache: 100%" in terminal.getvalue()


@pytest.mark.parametrize("module", ["moir.data.__main__", "moir.media.__main__"])
def test_the_data_and_media_stages_start_without_the_model_stack(module):
    """Every job is a fresh process: a stage that never runs a model must not pay for importing torch and
    transformers (seconds per job; benchmarks/startup.py measures it)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
