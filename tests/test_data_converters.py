"""Converters from each dataset's released format (fixtures written in that format) to manifests, and the
restricted unpickler MMBench-Video's video pickles go through."""

import io
import json
import pickle
from pathlib import Path
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from moir.data import mmbench_video, scienceqa, vizwiz
from moir.data.__main__ import main
from moir.data.manifest import read_manifest, resolve_media
from moir.data.safe_pickle import UnsafePickleError, load_bytes_mapping, safe_load
from moir.data.synthetic import write_mp4


def _png(colour=(200, 30, 30), size=(12, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _problem(question, choices, answer, hint="", subject="natural science", **extra):
    return {"question": question, "choices": choices, "answer": answer, "hint": hint, "task": "closed choice",
            "grade": "grade4", "subject": subject, "topic": "physics", "category": "Velocity", "skill": "s",
            "lecture": "l", "solution": "s", **extra}


# ------------------------------------------------------------------------------------------------ ScienceQA

HF_SCHEMA = pa.schema([
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("question", pa.string()), ("choices", pa.list_(pa.string())), ("answer", pa.int8()), ("hint", pa.string()),
    ("task", pa.string()), ("grade", pa.string()), ("subject", pa.string()), ("topic", pa.string()),
    ("category", pa.string()), ("skill", pa.string()), ("lecture", pa.string()), ("solution", pa.string()),
])


def _write_hf_scienceqa(raw):
    (raw / "data").mkdir(parents=True)
    splits = {
        "train": [
            {"image": {"bytes": _png(), "path": "image.png"}, **_problem("Which is red?", ["the box", "the sky"], 0, "Look.")},
            {"image": None, **_problem("Which word is a noun?", ["run", "cat", "blue"], 1, subject="language science")},
        ],
        "validation": [{"image": None, **_problem("Is ice cold?", ["yes", "no"], 0)}],
        "test": [{"image": {"bytes": _png((0, 0, 255)), "path": None}, **_problem("Which colour?", ["red", "blue"], 1)}],
    }
    for name, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=HF_SCHEMA), raw / "data" / f"{name}-00000-of-00001.parquet")


def test_scienceqa_hf_parquet(tmp_path):
    raw = tmp_path / "raw"
    _write_hf_scienceqa(raw)
    main(["--log-level", "WARNING", "convert", "scienceqa", "--raw", str(raw), "--manifests", str(tmp_path / "m")])
    train = read_manifest(tmp_path / "m" / "train.parquet")
    rows = train.to_pylist()
    assert [row["id"] for row in rows] == ["scienceqa/train/0", "scienceqa/train/1"]
    assert rows[0] | {"media_path": None} == {
        "id": "scienceqa/train/0", "dataset": "scienceqa", "split": "train", "question": "Which is red?",
        "choices": ["the box", "the sky"], "answer_index": 0, "answers": ["the box"], "answer_type": None,
        "hint": "Look.", "media_kind": "image", "media_path": None, "has_image": True, "category": "natural science",
    }
    assert resolve_media(train, rows[0]["media_path"]).read_bytes() == _png()
    assert rows[1]["media_kind"] == "none" and rows[1]["media_path"] is None and not rows[1]["has_image"]
    assert rows[1]["answers"] == ["cat"] and rows[1]["category"] == "language science"
    assert read_manifest(tmp_path / "m" / "val.parquet").num_rows == 1
    test = read_manifest(tmp_path / "m" / "test.parquet").to_pylist()
    assert test[0]["media_path"] == "images/test/0.png" and test[0]["answer_index"] == 1


def test_scienceqa_hf_bad_input_names_file_and_field(tmp_path):
    raw = tmp_path / "raw"
    _write_hf_scienceqa(raw)
    table = pq.read_table(raw / "data" / "train-00000-of-00001.parquet").drop_columns(["hint"])
    pq.write_table(table, raw / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(scienceqa.ScienceQAError, match=r"train-00000-of-00001\.parquet: missing column\(s\) \['hint'\]"):
        scienceqa.convert(raw, tmp_path / "m", splits=("train",))
    assert not (tmp_path / "m" / "train.parquet").exists()
    rows = [{"image": None, **_problem("Q?", ["a", "b"], 5)}]
    pq.write_table(pa.Table.from_pylist(rows, schema=HF_SCHEMA), raw / "data" / "validation-00000-of-00001.parquet")
    with pytest.raises(scienceqa.ScienceQAError, match="'answer' = 5 is outside its 2 choices"):
        scienceqa.convert(raw, tmp_path / "m", splits=("val",))


def test_scienceqa_official_layout(tmp_path):
    raw = tmp_path / "raw"
    problems = {
        "7": _problem("Which is red?", ["box", "sky"], 0, image="image.png", split="train"),
        "12": _problem("Which is a noun?", ["run", "cat"], 1, image=None, split="train"),
        "40": _problem("Hot or cold?", ["hot", "cold"], 1, image=None, split="test"),
    }
    raw.mkdir()
    (raw / "problems.json").write_text(json.dumps(problems))
    (raw / "pid_splits.json").write_text(json.dumps({"train": ["7", "12"], "val": [], "test": ["40"], "minitrain": ["7"]}))
    (raw / "images" / "train" / "7").mkdir(parents=True)
    (raw / "images" / "train" / "7" / "image.png").write_bytes(_png())
    scienceqa.convert(raw, tmp_path / "m", source="official")
    rows = read_manifest(tmp_path / "m" / "train.parquet").to_pylist()
    assert [(row["id"], row["media_path"], row["has_image"]) for row in rows] == [
        ("scienceqa/train/7", "images/train/7/image.png", True), ("scienceqa/train/12", None, False)]
    assert read_manifest(tmp_path / "m" / "val.parquet").num_rows == 0
    (raw / "images" / "train" / "7" / "image.png").unlink()
    with pytest.raises(scienceqa.ScienceQAError, match=r"problems\.json: problem 7 field 'image'"):
        scienceqa.convert(raw, tmp_path / "m", source="official")


# ------------------------------------------------------------------------------------------------ VizWiz


def _vizwiz_entry(split, i, answers=None, answer_type="other"):
    entry = {"image": f"VizWiz_{split}_{i:08d}.jpg", "question": f"What is this {i}?"}
    if answers is not None:
        entry |= {"answers": [{"answer": a, "answer_confidence": "yes"} for a in answers],
                  "answer_type": answer_type, "answerable": int(answer_type != "unanswerable")}
    return entry


def _write_vizwiz(raw):
    ten = ["soup", "soup", "tomato soup", "soup", "can", "soup", "soup", "unanswerable", "soup", "Soup"]
    annotations = {
        "train": [_vizwiz_entry("train", 0, ten), _vizwiz_entry("train", 1, ["yes"] * 10, "yes/no")],
        "val": [_vizwiz_entry("val", 0, ["unanswerable"] * 10, "unanswerable")],
        "test": [_vizwiz_entry("test", 0), _vizwiz_entry("test", 1)],
    }
    (raw / "Annotations").mkdir(parents=True)
    for split, entries in annotations.items():
        (raw / "Annotations" / f"{split}.json").write_text(json.dumps(entries))
        (raw / split).mkdir()
        for entry in entries:
            Image.new("RGB", (8, 8)).save(raw / split / entry["image"], format="JPEG")
    return ten


def test_vizwiz_keeps_all_ten_answers_and_the_answer_type(tmp_path):
    raw = tmp_path / "raw"
    ten = _write_vizwiz(raw)
    main(["--log-level", "WARNING", "convert", "vizwiz", "--raw", str(raw), "--manifests", str(tmp_path / "m")])
    train = read_manifest(tmp_path / "m" / "train.parquet")
    heldout = read_manifest(tmp_path / "m" / "val_heldout.parquet")
    rows = {row["media_path"]: row for row in train.to_pylist() + heldout.to_pylist()}
    first = rows["train/VizWiz_train_00000000.jpg"]
    assert first["id"].endswith("/VizWiz_train_00000000") and first["answers"] == ten
    assert first["answer_type"] == "other" and first["category"] == "other" and first["choices"] == []
    assert resolve_media(train, first["media_path"]).is_file()
    assert train.num_rows == heldout.num_rows == 1  # two train questions: one is held out for validation
    assert heldout.to_pylist()[0]["split"] == "val_heldout"
    assert heldout.to_pylist()[0]["id"].startswith("vizwiz/val_heldout/")
    test = read_manifest(tmp_path / "m" / "test.parquet").to_pylist()
    assert [(row["answers"], row["answer_type"]) for row in test] == [([], None), ([], None)]


def test_vizwiz_validation_is_a_seeded_slice_of_train_disjoint_from_val():
    """val_heldout: a seeded, order-independent 10% of train; no example or image in two of train, val_heldout
    and val (the evaluation split)."""
    rows = [vizwiz._row("train", _vizwiz_entry("train", i, ["a"] * 10), i, Path("train.json")) for i in range(200)]
    keep, heldout = vizwiz.split_heldout(rows)
    assert len(heldout) == 20 and len(keep) == 180
    assert vizwiz.heldout_ids(rows[::-1]) == vizwiz.heldout_ids(rows)  # the order does not matter
    assert vizwiz.heldout_ids(rows, seed=1) != vizwiz.heldout_ids(rows)  # the seed does
    assert not {r["media_path"] for r in keep} & {r["media_path"] for r in heldout}
    assert not {r["id"] for r in keep} & {r["id"] for r in heldout}
    val = [vizwiz._row("val", _vizwiz_entry("val", i, ["a"] * 10), i, Path("val.json")) for i in range(50)]
    assert not {r["media_path"] for r in heldout} & {r["media_path"] for r in val}
    assert not {r["id"] for r in heldout} & {r["id"] for r in val}


def test_vizwiz_bad_input_names_file_and_field(tmp_path):
    raw = tmp_path / "raw"
    _write_vizwiz(raw)
    (raw / "val" / "VizWiz_val_00000000.jpg").unlink()
    with pytest.raises(vizwiz.VizWizError, match=r"val\.json: 1 image\(s\) not found .*VizWiz_val_00000000\.jpg"):
        vizwiz.convert(raw, tmp_path / "m", splits=("val",))
    (raw / "Annotations" / "train.json").write_text(json.dumps([_vizwiz_entry("train", 0, ["a"] * 10, "colour")]))
    with pytest.raises(vizwiz.VizWizError, match=r"train\.json: entry 0 .* field 'answer_type' is 'colour'"):
        vizwiz.convert(raw, tmp_path / "m", splits=("train",))
    (raw / "Annotations" / "train.json").write_text(json.dumps([{"image": "x.jpg"}]))
    with pytest.raises(vizwiz.VizWizError, match=r"train\.json: entry 0 has no field 'question'"):
        vizwiz.convert(raw, tmp_path / "m", splits=("train",))


# ------------------------------------------------------------------------------------------------ MMBench-Video

TSV_COLUMNS = ("index", "video", "video_type", "question", "answer", "dimensions", "video_path")


def _write_mmbench_video(raw, n_videos=12):
    raw.mkdir(parents=True)
    frames = np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    write_mp4(raw / "clip.mp4", frames, fps=4)
    clip = (raw / "clip.mp4").read_bytes()
    (raw / "clip.mp4").unlink()
    videos = {f"-vid_{i:02d}": clip + bytes([i]) for i in range(n_videos)}
    (raw / "video_pkl").mkdir()
    names = list(videos)
    for chunk, part in enumerate((names[: n_videos // 2], names[n_videos // 2:])):
        with open(raw / "video_pkl" / f"video_chunk_{chunk}.pkl", "wb") as file:
            pickle.dump({name: videos[name] for name in part}, file, protocol=4)
    lines = ["\t".join(TSV_COLUMNS)]
    for i, name in enumerate(names * 2):
        question = f'What happens in "{name}", scene {i}?'.replace('"', '""')
        lines.append("\t".join([str(i), name, "Sports", f'"{question}"', f"Answer {i}.", "['Counting', 'OCR']",
                                f"./video/{name}.mp4"]))
    (raw / "MMBench-Video.tsv").write_text("\n".join(lines) + "\n")
    return videos


def test_mmbench_video_unpacks_pickles_and_splits_by_video(tmp_path):
    raw = tmp_path / "raw"
    videos = _write_mmbench_video(raw)
    main(["--log-level", "WARNING", "convert", "mmbench_video", "--raw", str(raw), "--manifests", str(tmp_path / "m"),
          "--val-fraction", "0.25", "--test-fraction", "0.25"])
    rows, splits_of_video = [], {}
    for split in ("train", "val", "test"):
        table = read_manifest(tmp_path / "m" / f"{split}.parquet")
        for row in table.to_pylist():
            rows.append(row)
            splits_of_video.setdefault(row["media_path"], set()).add(split)
            assert resolve_media(table, row["media_path"]).read_bytes() == videos[row["media_path"][6:-4]]
    assert len(rows) == 2 * len(videos) and all(len(s) == 1 for s in splits_of_video.values())
    assert {split for s in splits_of_video.values() for split in s} == {"train", "val", "test"}
    row = next(r for r in rows if r["id"] == "mmbench_video/" + r["split"] + "/3")
    assert row["question"] == 'What happens in "-vid_03", scene 3?' and row["answers"] == ["Answer 3."]
    assert row["category"] == "Counting; OCR" and row["media_kind"] == "video" and row["choices"] == []
    assert mmbench_video.split_of("-vid_03", seed=0, val_fraction=0.25, test_fraction=0.25) == row["split"]


def test_mmbench_video_bad_input(tmp_path):
    raw = tmp_path / "raw"
    _write_mmbench_video(raw)
    tsv = (raw / "MMBench-Video.tsv").read_text()
    (raw / "MMBench-Video.tsv").write_text(tsv.replace("['Counting', 'OCR']", "Counting", 1))
    with pytest.raises(mmbench_video.MMBenchVideoError, match=r"MMBench-Video\.tsv: line 2 column 'dimensions'"):
        mmbench_video.convert(raw, tmp_path / "m")
    (raw / "MMBench-Video.tsv").write_text(tsv.replace("\t-vid_00\t", "\t-vid_99\t"))
    with pytest.raises(mmbench_video.MMBenchVideoError, match=r"in no video_pkl chunk, e\.g\. \['-vid_99'\]"):
        mmbench_video.convert(raw, tmp_path / "m")
    with open(raw / "video_pkl" / "video_chunk_2.pkl", "wb") as file:
        pickle.dump({"../escape": b"x"}, file)
    with pytest.raises(mmbench_video.MMBenchVideoError, match="not a plain file name"):
        mmbench_video.unpack_videos(raw / "video_pkl", raw / "video")
    assert not (raw / "escape.mp4").exists()


# ------------------------------------------------------------------------------------------------ safe pickles


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")  # unpickling would create (truncate) a file


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_safe_pickle_loads_plain_data(tmp_path, protocol):
    data = {"a": b"\x00\x01", "b": [1, 2.5, True, None, ("x", b"y")], "c": {"nested": "text"}}
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert safe_load(path) == data


def test_safe_pickle_runs_no_code(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({"video": _Exploit(target)}, protocol=4)
    pickle.loads(payload)["video"].close()  # control: the stock unpickler runs the payload
    assert target.exists()
    target.unlink()
    (tmp_path / "bad.pkl").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"bad\.pkl: refused to load global io\.open"):
        safe_load(tmp_path / "bad.pkl")
    assert not target.exists()


@pytest.mark.parametrize("payload, message", [
    (OrderedDict(a=b"x"), "refused to load global collections.OrderedDict"),
    ({"a": {1, 2}}, "holds a set"),
    ({"a": bytearray(b"x")}, "refused to load global builtins.bytearray"),
])
def test_safe_pickle_refuses_anything_but_plain_containers(tmp_path, payload, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(UnsafePickleError, match=message):
        safe_load(path)


def test_bytes_mapping_shape_and_corrupt_files(tmp_path):
    path = tmp_path / "chunk.pkl"
    path.write_bytes(pickle.dumps(["not", "a", "dict"]))
    with pytest.raises(UnsafePickleError, match="expected a dict of name -> bytes, got a list"):
        load_bytes_mapping(path)
    path.write_bytes(pickle.dumps({"video": "text, not bytes"}))
    with pytest.raises(UnsafePickleError, match="found str -> str"):
        load_bytes_mapping(path)
    path.write_bytes(pickle.dumps({"video": b"mp4"})[:-5])
    with pytest.raises(UnsafePickleError, match=r"chunk\.pkl: not a valid plain-data pickle"):
        load_bytes_mapping(path)
