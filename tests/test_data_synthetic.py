"""The demo benchmark: deterministic, answers that match the pixels, hints at the asked accuracy, real videos."""

import re

import decord
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from moir.data.__main__ import main
from moir.data.manifest import read_manifest, resolve_media
from moir.data.synthetic import (
    BACKGROUND,
    COLOURS,
    DIRECTIONS,
    NUMBERS,
    SHAPES,
    TOKEN_PATTERN,
    TONE_HZ,
    VOCABULARY,
    YES_NO,
    HintSettings,
    generate_synth_image,
    generate_synth_video,
    video_background,
)
from moir.prompts import build_prompt, target_answer


def _rows(path):
    return read_manifest(path).to_pylist()


def _stated(row):
    """The answer a hint states ("A friend says the answer is red." -> "red")."""
    return re.sub(r"\.$", "", row["hint"]).split()[-1]


def _occupied_cells(pixels: np.ndarray) -> list[tuple[int, int]]:
    half = pixels.shape[0] // 2
    foreground = np.any(pixels != BACKGROUND, axis=-1)
    return [(r, c) for r in range(2) for c in range(2) if foreground[r * half:(r + 1) * half, c * half:(c + 1) * half].any()]


def _shape_of(cell: np.ndarray) -> str:
    foreground = np.any(cell != BACKGROUND, axis=-1)
    ys, xs = np.nonzero(foreground)
    fill = foreground.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill > 0.92 else "circle" if fill > 0.65 else "triangle"


@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-image")
    generate_synth_image(root / "raw", root / "manifests", {"pretrain": 40, "train": 400, "val": 400, "test": 60},
                         hints=HintSettings(hint_accuracy=0.8, eval_hint_accuracy=0.5), seed=3)
    return root


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-video")
    generate_synth_video(root / "raw", root / "manifests", {"train": 24, "test": 8}, silent_share=0.25, tone_share=0.3, seed=1)
    return root


def test_image_answers_match_the_pixels(image_dataset):
    rows = _rows(image_dataset / "manifests" / "train.parquet")
    table = read_manifest(image_dataset / "manifests" / "train.parquet")
    assert {row["category"].split(":")[0] for row in rows} == {"colour", "shape", "count", "side", "level"}
    for row in rows:
        pixels = np.asarray(Image.open(resolve_media(table, row["media_path"])).convert("RGB"))
        answer = row["answers"][0]
        cells = _occupied_cells(pixels)
        kind = row["category"].split(":")[0]
        if kind == "colour":
            colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
            shape_colour = next(tuple(c) for c in colours[np.argsort(-counts)] if tuple(c) != BACKGROUND)
            assert shape_colour == COLOURS[answer]
        elif kind == "count":
            assert NUMBERS[len(cells) - 1] == answer
        elif kind == "side":
            assert len(cells) == 1 and ("left", "right")[cells[0][1]] == answer
        elif kind == "level":
            assert len(cells) == 1 and ("top", "bottom")[cells[0][0]] == answer
        else:
            half = pixels.shape[0] // 2
            r, c = cells[0]
            assert _shape_of(pixels[r * half:(r + 1) * half, c * half:(c + 1) * half]) == answer
        if row["choices"]:
            assert 2 <= len(row["choices"]) <= 4 and row["choices"][row["answer_index"]] == answer


def test_hints_are_right_at_the_configured_rate(image_dataset):
    for split, accuracy in (("train", 0.8), ("val", 0.5)):
        rows = _rows(image_dataset / "manifests" / f"{split}.parquet")
        right = [row["category"].endswith("hint-right") for row in rows]
        assert abs(np.mean(right) - accuracy) < 0.1, split  # 4 standard deviations at n=400
        for row, is_right in zip(rows, right):
            assert (_stated(row) == row["answers"][0]) == is_right
            if row["choices"]:
                assert _stated(row) in row["choices"]  # a wrong hint names one of the other options


def test_generation_is_deterministic_and_splits_are_independent(image_dataset, tmp_path):
    generate_synth_image(tmp_path / "raw", tmp_path / "manifests", {"train": 10, "test": 60},
                         hints=HintSettings(hint_accuracy=0.8, eval_hint_accuracy=0.5), seed=3)
    again = pq.read_table(tmp_path / "manifests" / "test.parquet").to_pylist()
    first = pq.read_table(image_dataset / "manifests" / "test.parquet").to_pylist()
    assert again == first  # same seed, different train size: identical test split
    for row in first[:10]:
        assert (tmp_path / "raw" / row["media_path"]).read_bytes() == (image_dataset / "raw" / row["media_path"]).read_bytes()
    generate_synth_image(tmp_path / "other", tmp_path / "other-manifests", {"test": 60}, seed=4)
    assert pq.read_table(tmp_path / "other-manifests" / "test.parquet").to_pylist() != first


def test_vocabulary_covers_every_prompt_and_answer(image_dataset, video_dataset):
    assert len(VOCABULARY) == len(set(VOCABULARY))
    vocabulary = set(VOCABULARY)
    for manifests in (image_dataset / "manifests", video_dataset / "manifests"):
        for path in manifests.glob("*.parquet"):
            for row in _rows(path):
                text = build_prompt(row, transcript="high") + " " + target_answer(row)
                assert set(re.findall(TOKEN_PATTERN, text)) <= vocabulary, text


def _shape_pixels(frame: np.ndarray, background=BACKGROUND) -> np.ndarray:
    return np.abs(frame.astype(int) - background).sum(axis=-1) > 120


def test_videos_are_real_mp4s_whose_answers_need_the_frames(video_dataset):
    table = read_manifest(video_dataset / "manifests" / "train.parquet")
    rows = table.to_pylist()
    kinds = {row["category"].split(":")[0] for row in rows}
    assert {"direction", "tone"} <= kinds
    silent = 0
    for row in rows:
        path = str(resolve_media(table, row["media_path"]))
        reader = decord.VideoReader(path)
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        assert frames.shape == (12, 64, 64, 3)
        first, last = frames[0], frames[-1]
        answer, kind = row["answers"][0], row["category"].split(":")[0]
        try:
            audio = decord.AudioReader(path, sample_rate=16000, mono=True)[:].asnumpy()[0]
        except decord.DECORDError:
            audio = None
            silent += 1
            assert kind != "tone"
        if kind == "direction":
            (y0, x0), (y1, x1) = (np.argwhere(_shape_pixels(f)).mean(axis=0) for f in (first, last))
            moved = {"right": x1 - x0, "left": x0 - x1, "down": y1 - y0, "up": y0 - y1}
            assert max(moved, key=moved.get) == answer and answer in DIRECTIONS
        elif kind in ("start colour", "end colour"):
            frame = first if kind == "start colour" else last
            mean = frame[_shape_pixels(frame)].mean(axis=0)
            assert min(COLOURS, key=lambda c: np.abs(mean - COLOURS[c]).sum()) == answer
        elif kind == "colour change":
            start, end = (f[_shape_pixels(f)].mean(axis=0) for f in (first, last))
            assert (np.abs(start - end).sum() > 60) == (answer == "yes")
        elif kind == "tone":
            spectrum = np.abs(np.fft.rfft(audio))
            peak_hz = np.argmax(spectrum) * 16000 / len(audio)
            assert min(TONE_HZ, key=lambda t: abs(TONE_HZ[t] - peak_hz)) == answer
    assert 0 < silent < len(rows)


def test_video_files_are_byte_identical_across_runs(video_dataset, tmp_path):
    generate_synth_video(tmp_path / "raw", tmp_path / "manifests", {"test": 8}, silent_share=0.25, tone_share=0.3, seed=1)
    for path in sorted((video_dataset / "raw" / "test").glob("*.mp4")):
        assert (tmp_path / "raw" / "test" / path.name).read_bytes() == path.read_bytes()


def test_cli_writes_manifests_with_their_media_root(tmp_path):
    raw, manifests = tmp_path / "raw", tmp_path / "manifests"
    main(["--log-level", "WARNING", "synth", "synth-image", "--raw", str(raw), "--manifests", str(manifests),
          "--pretrain", "5", "--train", "4", "--val", "3", "--test", "2", "--image-size", "32"])
    for split, n in (("pretrain", 5), ("train", 4), ("val", 3), ("test", 2)):
        table = read_manifest(manifests / f"{split}.parquet")
        assert table.num_rows == n and table.schema.metadata[b"dataset"] == b"synth-image"
        for path in table.column("media_path").to_pylist():
            assert Image.open(resolve_media(table, path)).size == (32, 32)
    with pytest.raises(SystemExit):
        main(["synth", "synth-image", "--raw", str(raw), "--manifests", str(manifests), "--hint-accuracy", "1.5"])


def test_rejects_settings_that_would_give_unreadable_or_meaningless_data(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        generate_synth_video(tmp_path, tmp_path, {"train": 1}, frame_size=48)
    with pytest.raises(ValueError, match="hint_accuracy"):
        generate_synth_image(tmp_path, tmp_path, {"train": 1}, hints=HintSettings(hint_accuracy=-0.1))
    with pytest.raises(ValueError, match="unknown split"):
        generate_synth_image(tmp_path, tmp_path, {"dev": 1})


def test_fixed_choices_list_every_answer_in_one_order(tmp_path):
    assert main(["synth", "synth-image", "--raw", str(tmp_path / "raw"), "--manifests", str(tmp_path / "manifests"),
                 "--seed", "2", "--train", "60", "--pretrain", "0", "--val", "0", "--test", "0", "--image-size", "32",
                 "--hint-accuracy", "0.5", "--choice-share", "1", "--fixed-choices"]) == 0
    rows = _rows(tmp_path / "manifests" / "train.parquet")
    spaces = {"colour": list(COLOURS), "shape": list(SHAPES), "count": list(NUMBERS), "side": ["left", "right"],
              "level": ["top", "bottom"]}
    for row in rows:
        assert row["choices"] == spaces[row["category"].split(":")[0]]
        assert row["choices"][row["answer_index"]] == row["answers"][0]
        assert _stated(row) in row["choices"]
    assert {row["category"].split(":")[1] for row in rows} == {"hint-right", "hint-wrong"}


def test_pretrain_question_weights_shift_only_the_pretrain_split(image_dataset, tmp_path):
    """shape=4 with the other types at 1 makes half the pretrain questions shape questions; the other splits are
    byte-identical to an unweighted run (the weights apply to the pretrain split alone)."""
    assert main(["synth", "synth-image", "--raw", str(tmp_path / "raw"), "--manifests", str(tmp_path / "manifests"),
                 "--seed", "3", "--pretrain", "400", "--train", "0", "--val", "0", "--test", "60",
                 "--hint-accuracy", "0.8", "--eval-hint-accuracy", "0.5", "--pretrain-question-weights", "shape=4"]) == 0
    kinds = [row["category"].split(":")[0] for row in _rows(tmp_path / "manifests" / "pretrain.parquet")]
    assert 0.42 < kinds.count("shape") / len(kinds) < 0.58  # 4 / 8, binomial sd 0.025
    assert set(kinds) == {"colour", "shape", "count", "side", "level"}
    assert _rows(tmp_path / "manifests" / "test.parquet") == _rows(image_dataset / "manifests" / "test.parquet")
    for path in ("test/000000.png", "test/000059.png"):
        assert (tmp_path / "raw" / path).read_bytes() == (image_dataset / "raw" / path).read_bytes()
    with pytest.raises(ValueError, match=r"unknown question type\(s\) \['direction'\]"):
        generate_synth_image(tmp_path, tmp_path, {"pretrain": 1}, pretrain_question_weights={"direction": 2})
    with pytest.raises(ValueError, match="not all 0"):
        generate_synth_video(tmp_path, tmp_path, {"pretrain": 1}, pretrain_question_weights={
            "direction": 0, "start colour": 0, "end colour": 0, "colour change": 0})
    with pytest.raises(SystemExit):
        main(["synth", "synth-image", "--raw", str(tmp_path), "--manifests", str(tmp_path),
              "--pretrain-question-weights", "shape:3"])


def test_chance_hints_name_every_candidate_equally_often(tmp_path):
    """pretrain_hint_accuracy "chance": the stated answer is uniform over the candidates (the options of a
    multiple-choice question, else the answer space) whatever the answer, so the hint carries no information."""
    generate_synth_video(tmp_path / "raw", tmp_path / "manifests", {"pretrain": 600, "train": 200}, frame_size=32,
                         fps=2, silent_share=1.0, seed=5,
                         hints=HintSettings(hint_accuracy=0.8, pretrain_hint_accuracy="chance", fixed_choices=True))
    rows = _rows(tmp_path / "manifests" / "pretrain.parquet")
    spaces = {"direction": DIRECTIONS, "start colour": tuple(COLOURS), "end colour": tuple(COLOURS),
              "colour change": YES_NO}
    expected = np.mean([1 / len(spaces[row["category"].split(":")[0]]) for row in rows])
    right = np.mean([_stated(row) == row["answers"][0] for row in rows])
    assert abs(right - expected) < 0.065  # 3.3 sd at n=600
    stated = [_stated(row) for row in rows if row["category"].startswith("direction")]
    for direction in DIRECTIONS:  # each about 1/4 of ~150 direction questions, whatever the answers were
        assert 0.14 < stated.count(direction) / len(stated) < 0.36
    train = _rows(tmp_path / "manifests" / "train.parquet")  # the other splits keep their accuracy
    assert abs(np.mean([row["category"].endswith("hint-right") for row in train]) - 0.8) < 0.1
    with pytest.raises(ValueError, match="hint_accuracy must be in"):
        generate_synth_image(tmp_path, tmp_path, {"train": 1}, hints=HintSettings(hint_accuracy="chance"))
    with pytest.raises(ValueError, match="pretrain_hint_accuracy must be in"):
        generate_synth_image(tmp_path, tmp_path, {"train": 1}, hints=HintSettings(pretrain_hint_accuracy=float("nan")))


def test_gradient_background_shows_where_a_patch_is_and_keeps_the_answers(tmp_path):
    background = video_background(32, "gradient")
    assert background[0, 0].tolist() == [248, 248, 212] and background[-1, -1].tolist() == [176, 176, 212]
    assert (np.diff(background[..., 0].astype(int), axis=1) <= 0).all()  # red falls left to right
    assert (np.diff(background[..., 1].astype(int), axis=0) <= 0).all()  # green falls top to bottom
    assert len({tuple(background[y, x]) for y in range(0, 32, 8) for x in range(0, 32, 8)}) == 16
    assert (video_background(32) == BACKGROUND).all()
    generate_synth_video(tmp_path / "raw", tmp_path / "manifests", {"train": 24}, frame_size=32, fps=2,
                         silent_share=1.0, background="gradient", seed=2)
    table = read_manifest(tmp_path / "manifests" / "train.parquet")
    checked = 0
    for row in table.to_pylist():
        kind, answer = row["category"].split(":")[0], row["answers"][0]
        reader = decord.VideoReader(str(resolve_media(table, row["media_path"])))
        first, last = reader.get_batch([0, len(reader) - 1]).asnumpy()
        shape = _shape_pixels(first, background)
        assert np.abs(first[~shape].astype(int) - background[~shape]).mean() < 6  # the codec keeps the gradient
        if kind == "direction":
            (y0, x0), (y1, x1) = (np.argwhere(_shape_pixels(f, background)).mean(axis=0) for f in (first, last))
            moved = {"right": x1 - x0, "left": x0 - x1, "down": y1 - y0, "up": y0 - y1}
            assert max(moved, key=moved.get) == answer
            checked += 1
    assert checked
    with pytest.raises(ValueError, match="background"):
        generate_synth_video(tmp_path, tmp_path, {"train": 1}, frame_size=32, background="stripes")
