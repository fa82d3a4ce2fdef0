"""Hostile and careless input (issue 16): the media root, archive/pickle/transfer bombs, checksums of cache shards,
the judge's HTTP client, errors that name the file, and resource caps on images and frames.

Every test builds its hostile input in a few KiB (caps are set small where a real attack would need gigabytes);
HTTP servers listen on 127.0.0.1 only. Checkpoint checksums and the seed mismatch are tested in test_train.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from moir.data.download import ChecksumError, UnsafeArchiveError, download_file, safe_extract
from moir.data.manifest import SCHEMA, ManifestError, read_manifest, resolve_media, write_manifest
from moir.data.mmbench_video import MMBenchVideoError, read_questions
from moir.data.safe_pickle import UnsafePickleError, safe_load
from moir.data.synthetic import write_mp4
from moir.data.vizwiz import VizWizError
from moir.data.vizwiz import convert as convert_vizwiz
from moir.encoder_cache.cache import CacheMismatchError, EncoderCache, dump_cache
from moir.evaluate.judge import JudgeError, OpenAIJudge
from moir.media.extract import TooManyBadFiles, extract_media
from moir.media.frames import FrameSampling, decode_image, read_encoded_frames
from moir.models import EncodedMedia

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ fixtures


def manifest_row(index: int, media_path: str, kind: str = "image") -> dict:
    return {
        "id": f"d/test/{index}", "dataset": "d", "split": "test", "question": "What is it?", "choices": [],
        "answer_index": None, "answers": ["x"], "answer_type": None, "hint": "", "media_kind": kind,
        "media_path": media_path, "has_image": True, "category": "",
    }


def png_bytes(width: int, height: int, rows: int | None = None) -> bytes:
    """An RGB PNG whose header says width x height but whose data holds only `rows` rows (all when None)."""
    raw = b"".join(b"\x00" + b"\x7f" * (width * 3) for _ in range(height if rows is None else rows))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def grey_video(n_frames: int = 6, width: int = 64, height: int = 48) -> np.ndarray:
    return np.stack([np.full((height, width, 3), 20 * t, np.uint8) for t in range(n_frames)])


def sparse_tar(name: str, real_size: int, data: bytes = b"x" * 512) -> bytes:
    """A GNU sparse tar ('S' member, old format) of one file: `real_size` bytes, of which only `data` is stored."""
    header = bytearray(512)

    def put(offset: int, value: bytes) -> None:
        header[offset : offset + len(value)] = value

    def octal(n: int, width: int) -> bytes:
        return f"{n:0{width - 1}o}\0".encode()

    put(0, name.encode())
    put(100, octal(0o644, 8))
    put(108, octal(0, 8))
    put(116, octal(0, 8))
    put(124, octal(len(data), 12))
    put(136, octal(0, 12))
    put(156, b"S")
    put(257, b"ustar  \0")
    put(386, octal(real_size - len(data), 12))  # one sparse segment at the end of the file
    put(398, octal(len(data), 12))
    put(483, octal(real_size, 12))
    header[148:156] = b" " * 8
    put(148, f"{sum(header):06o}\0 ".encode())
    return bytes(header) + data + b"\0" * (-len(data) % 512) + b"\0" * 1024


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def http_server():
    """A loopback server whose handler is set per test (`server.handle(handler)`), recording every request."""
    servers = []

    def start(handler_class):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        httpd.daemon_threads = True
        httpd.requests = []
        httpd.sent = 0
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(httpd)
        return httpd

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "auth": self.headers.get("Authorization"), "body": body})

    def reply(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


SCORE_REPLY = json.dumps({"choices": [{"message": {"role": "assistant", "content": "3"}}]}).encode()


def url_of(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


# ------------------------------------------------------------------------------------------------ 2. media root


@pytest.mark.parametrize("media_path", ["../../outside/secret.png", "/etc/passwd", "images/../../secret.png"])
def test_manifest_refuses_media_paths_outside_the_root_naming_the_row(tmp_path, media_path):
    rows = [manifest_row(0, "ok.png"), manifest_row(1, media_path)]
    with pytest.raises(ManifestError, match=r"row 1 \(id 'd/test/1'\) column 'media_path'"):
        write_manifest(rows, tmp_path / "m.parquet", media_root=tmp_path)
    assert not (tmp_path / "m.parquet").exists()
    # a manifest written by another tool is refused on reading, too
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata({b"media_root": str(tmp_path).encode()})
    pq.write_table(table, tmp_path / "foreign.parquet")
    with pytest.raises(ManifestError, match=r"foreign\.parquet: row 1"):
        read_manifest(tmp_path / "foreign.parquet")


def test_a_symlink_out_of_the_media_root_is_refused_naming_the_row(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(4, 4))
    (root / "inside.png").write_bytes(png_bytes(4, 4))
    (root / "link.png").symlink_to(outside / "secret.png")
    manifest = read_manifest(write_manifest([manifest_row(0, "inside.png"), manifest_row(1, "link.png")],
                                            tmp_path / "m.parquet", media_root=root))
    assert resolve_media(manifest, "inside.png") == (root / "inside.png").resolve()
    message = r"'link\.png' resolves to .*outside the media root.*id\(s\) \['d/test/1'\]"
    with pytest.raises(ManifestError, match=message):
        resolve_media(manifest, "link.png")


def test_extraction_refuses_a_video_linked_from_outside_before_writing_anything(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write_mp4(outside / "private.mp4", grey_video(), 5)
    (root / "clip.mp4").symlink_to(outside / "private.mp4")
    manifest = write_manifest([manifest_row(0, "clip.mp4", "video")], tmp_path / "m.parquet", media_root=root)
    with pytest.raises(ManifestError, match="clip.mp4.*outside the media root"):
        extract_media(manifest, tmp_path / "media", FrameSampling(num_frames=2))
    assert not (tmp_path / "media").exists()


def vizwiz_entry(image: str) -> dict:
    return {"image": image, "question": "What is this?", "answer_type": "other", "answerable": 1,
            "answers": [{"answer": "a cup", "answer_confidence": "yes"}] * 10}


@pytest.mark.parametrize("image", ["../../outside/secret.png", "/etc/passwd", "sub/dir.jpg"])
def test_vizwiz_refuses_image_names_that_leave_the_split_directory(tmp_path, image):
    raw = tmp_path / "raw"
    (raw / "Annotations").mkdir(parents=True)
    (raw / "Annotations" / "train.json").write_text(json.dumps([vizwiz_entry(image)]))
    with pytest.raises(VizWizError, match=r"train\.json: entry 0 field 'image'.*not a plain file name"):
        convert_vizwiz(raw, tmp_path / "manifests", splits=("train",))
    assert not (tmp_path / "manifests" / "train.parquet").exists()


def test_vizwiz_refuses_an_image_that_is_a_symlink_out_of_the_raw_directory(tmp_path):
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    (raw / "Annotations").mkdir(parents=True)
    (raw / "train").mkdir()
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    (raw / "train" / "VizWiz_train_0.jpg").symlink_to(outside / "secret.jpg")
    (raw / "Annotations" / "train.json").write_text(json.dumps([vizwiz_entry("VizWiz_train_0.jpg")]))
    with pytest.raises(VizWizError, match=r"entry 0: media path 'train/VizWiz_train_0\.jpg' resolves to .*outside"):
        convert_vizwiz(raw, tmp_path / "manifests", splits=("train",))


# ------------------------------------------------------------------------------------------------ 3. bombs


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(zip_of([("ok.txt", b"fine"), ("zeros.bin", bytes(4 << 20))]))  # 4 MiB in about 4 KiB
    assert archive.stat().st_size < 10_000
    with pytest.raises(UnsafeArchiveError, match=r"bomb\.zip: extracts to \d+ bytes from \d+ .*max_ratio"):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_total_extracted_size_is_capped(tmp_path):
    archive = tmp_path / "big.zip"
    archive.write_bytes(zip_of([(f"{i}.bin", os.urandom(1000)) for i in range(5)]))
    with pytest.raises(UnsafeArchiveError, match="5000 bytes, more than max_bytes 4000"):
        safe_extract(archive, tmp_path / "out", max_bytes=4000)
    assert list((tmp_path / "out").iterdir()) == []
    assert safe_extract(archive, tmp_path / "out", max_bytes=5000) == 5


def test_a_sparse_tar_is_sized_by_what_it_expands_to(tmp_path):
    archive = tmp_path / "sparse.tar"
    archive.write_bytes(sparse_tar("big.bin", 64 << 20))  # 64 MiB from 2 KiB
    assert archive.stat().st_size == 2048
    with pytest.raises(UnsafeArchiveError, match=r"sparse\.tar: extracts to 67108864 bytes from 2048"):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    (tmp_path / "small.tar").write_bytes(sparse_tar("small.bin", 4096))  # within the ratio: extracted whole
    assert safe_extract(tmp_path / "small.tar", tmp_path / "out") == 1
    assert (tmp_path / "out" / "small.bin").read_bytes() == b"\0" * 3584 + b"x" * 512


@pytest.mark.parametrize("entries, message", [
    ([("a.txt", b"first"), ("b.txt", b"b"), ("a.txt", b"second")], r"two entries for a\.txt \(file and file\)"),
    ([("dir/x.txt", b"x"), ("./dir//x.txt", b"y")], r"two entries for dir/x\.txt"),
    ([("a", b"file"), ("a/b.txt", b"under a file")], r"a/b\.txt lies under a, which is a file entry"),
])
def test_duplicate_or_conflicting_entries_are_refused_before_anything_is_written(tmp_path, entries, message):
    archive = tmp_path / "dup.zip"
    with pytest.warns(UserWarning) if entries[0][0] == entries[-1][0] else contextlib.nullcontext():
        archive.write_bytes(zip_of(entries))
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


class StreamingHandler(QuietHandler):
    """GET: `server.total` bytes in 64 KiB writes, with no Content-Length (the body ends when the connection
    closes), or with an honest one when `server.announce`; counts what it managed to send."""

    def do_GET(self):
        self.record()
        self.send_response(200)
        if self.server.announce:
            self.send_header("Content-Length", str(self.server.total))
        self.end_headers()
        block = b"z" * (64 << 10)
        try:
            while self.server.sent < self.server.total:
                self.wfile.write(block)
                self.server.sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


@pytest.mark.parametrize("announce", [False, True])
def test_a_transfer_stops_at_its_pinned_size(http_server, tmp_path, announce):
    httpd = http_server(StreamingHandler)
    httpd.total, httpd.announce = 64 << 20, announce  # 64 MiB for a file pinned at 300 kB
    with pytest.raises(ChecksumError, match="pinned"):
        download_file(f"{url_of(httpd)}/file.bin", tmp_path / "file.bin", sha256="0" * 64, size=300_000,
                      retries=0, timeout=5)
    assert not (tmp_path / "file.bin").exists() and not (tmp_path / "file.bin.part").exists()
    time.sleep(0.2)  # let the server notice the closed connection
    assert httpd.sent < httpd.total  # the client hung up long before the end


def test_shared_references_cannot_inflate_a_pickle(tmp_path):
    blob = os.urandom(64 << 10)
    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps({f"video{i}": blob for i in range(200)}))  # 64 KiB on disk, 12.5 MiB unpacked
    assert path.stat().st_size < 80_000
    with pytest.raises(UnsafePickleError, match=r"shared\.pkl: unpacks to more than \d+ bytes.*pickle bomb"):
        safe_load(path)
    nested: list = [b"x" * 1000]
    for _ in range(40):  # 2**40 references to one string, in a few hundred bytes
        nested = [nested, nested]
    (tmp_path / "nested.pkl").write_bytes(pickle.dumps(nested))
    with pytest.raises(UnsafePickleError, match=r"nested\.pkl: unpacks to more than"):
        safe_load(tmp_path / "nested.pkl")
    loop: list = []
    loop.append(loop)
    (tmp_path / "loop.pkl").write_bytes(pickle.dumps(loop))
    with pytest.raises(UnsafePickleError, match=r"loop\.pkl: a container holds itself"):
        safe_load(tmp_path / "loop.pkl")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": blob, "b": [1, 2.5, None, "text"]}))
    assert safe_load(tmp_path / "plain.pkl")["b"] == [1, 2.5, None, "text"]


@pytest.mark.parametrize("data", [
    b"K\x01K\x02a.",  # APPEND to an int: AttributeError in the unpickler
    b"K\x01(K\x02e.",  # APPENDS to an int
    b"N}b.",  # BUILD on None: AttributeError too
])
def test_every_malformed_pickle_is_an_error_naming_the_file(tmp_path, data):
    (tmp_path / "bad.pkl").write_bytes(data)
    with pytest.raises(UnsafePickleError, match=r"bad\.pkl: not a valid plain-data pickle"):
        safe_load(tmp_path / "bad.pkl")


# ------------------------------------------------------------------------------------------------ 5. cache checksums

ENCODER = {"family": "test", "vision_weights": "w"}
CACHE_ITEMS = [(f"img/{i}.png", "image") for i in range(4)]


def encode(batch):
    return [EncodedMedia(torch.full((4, 8), float(i + 1)), None, "image") for i, _ in enumerate(batch)]


def test_flipped_bytes_in_a_cache_shard_are_refused_naming_the_shard(tmp_path):
    dump_cache(tmp_path, CACHE_ITEMS, encode, encoder=ENCODER, shard_size=2)
    shard = tmp_path / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    features = torch.full((4, 8), 1.0).half().view(torch.uint8).numpy().tobytes()
    start = data.index(features)
    data[start : start + 64] = bytes(b ^ 0x55 for b in data[start : start + 64])
    shard.write_bytes(bytes(data))
    cache = EncoderCache(tmp_path, encoder=ENCODER)
    assert torch.equal(cache.get("img/0.png").features, torch.full((4, 8), 1.0).half())  # shard 0 is intact
    with pytest.raises(CacheMismatchError, match=r"shard-00001\.parquet: corrupt cache shard: sha256"):
        cache.get("img/2.png")
    with pytest.raises(CacheMismatchError, match=r"shard-00001\.parquet: corrupt cache shard"):
        list(EncoderCache(tmp_path, encoder=ENCODER))


# ------------------------------------------------------------------------------------------------ 6. the judge


class RedirectingJudge(QuietHandler):
    """Answers every request with `server.status` and a Location on another origin (`server.target`)."""

    def do_POST(self):
        self.record()
        self.reply(self.server.status, b"", {"Location": self.server.target + "/v1/chat/completions"})

    do_GET = do_POST


class ScoringServer(QuietHandler):
    """The other origin: would score 3 for anyone, GET or POST."""

    def do_GET(self):
        self.record()
        self.reply(200, SCORE_REPLY, {"Content-Type": "application/json"})

    do_POST = do_GET


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_judge_never_follows_a_redirect_with_its_key(http_server, status):
    other = http_server(ScoringServer)
    judge_server = http_server(RedirectingJudge)
    judge_server.status, judge_server.target = status, url_of(other)
    judge = OpenAIJudge(url_of(judge_server) + "/v1", "m", api_key="SECRET-KEY", max_retries=0, timeout_s=5)
    with pytest.raises(JudgeError, match=f"judge at {url_of(judge_server)}/v1/chat/completions answered HTTP {status}"):
        judge("Question: q\nGroundtruth answer: a\nCandidate answer: a\nYour response: ")
    judge.check_reachable()  # a redirect is an answer: reachable, but not followed
    assert [request["auth"] for request in judge_server.requests] == ["Bearer SECRET-KEY"] * 2
    assert other.requests == []


class HugeReply(QuietHandler):
    def do_POST(self):
        self.record()
        self.reply(200, json.dumps({"padding": "x" * self.server.size}).encode())


def test_the_judge_caps_the_reply_and_never_quotes_a_huge_body(http_server):
    httpd = http_server(HugeReply)
    httpd.size = 2 << 20
    judge = OpenAIJudge(url_of(httpd) + "/v1", "m", max_retries=0, timeout_s=5)
    with pytest.raises(JudgeError, match="more than max_reply_bytes") as refused:
        judge("prompt")
    assert len(str(refused.value)) < 1000
    httpd.size = 500_000  # under the cap, but no choices: the error quotes a few hundred characters
    with pytest.raises(JudgeError, match=r"no choices\[0\]\.message\.content") as quoted:
        judge("prompt")
    assert len(str(quoted.value)) < 1000


class TricklingJudge(QuietHandler):
    """Sends the headers at once, then the body one byte every 0.15 s (a bounded loop: 41 bytes, about 6 s)."""

    def do_POST(self):
        self.record()
        self.send_response(200)
        self.send_header("Content-Length", str(len(SCORE_REPLY)))
        self.end_headers()
        try:
            for byte in SCORE_REPLY:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.15)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_the_judge_timeout_bounds_the_whole_request(http_server):
    httpd = http_server(TricklingJudge)
    judge = OpenAIJudge(url_of(httpd) + "/v1", "m", max_retries=0, timeout_s=1)
    with pytest.raises(JudgeError, match=r"no complete reply within 1 s"):
        judge("prompt")


class NotUtf8(QuietHandler):
    def do_POST(self):
        self.record()
        self.reply(200, b'{"choices": "\xff\xfe\xfa"}')


def test_a_reply_that_is_not_utf8_names_the_judge(http_server):
    httpd = http_server(NotUtf8)
    judge = OpenAIJudge(url_of(httpd) + "/v1", "m", max_retries=0, timeout_s=5)
    with pytest.raises(JudgeError, match=f"judge at {url_of(httpd)}/v1/chat/completions answered with invalid JSON"):
        judge("prompt")


# ------------------------------------------------------------------------------------------ 7. errors naming the file


def test_a_decompression_bomb_png_is_refused_naming_the_frame():
    with pytest.raises(ValueError, match=r"frame 3 of clip\.mp4: 10000x10000 pixels, more than max_pixels"):
        decode_image(png_bytes(10000, 10000, rows=2), "frame 3 of clip.mp4")


def test_a_truncated_png_is_refused_naming_the_file(tmp_path):
    from moir.media.images import ImageError, open_image

    (tmp_path / "short.png").write_bytes(png_bytes(200, 150, rows=2))
    with pytest.raises(ImageError, match=r"short\.png: truncated PNG: its data holds 1202 of the 90150 bytes"):
        open_image(tmp_path / "short.png")
    with pytest.raises(ValueError, match="truncated PNG"):
        decode_image(png_bytes(200, 150, rows=2), "frame 0")
    (tmp_path / "whole.png").write_bytes(png_bytes(200, 150))
    assert open_image(tmp_path / "whole.png").size == (200, 150)


def test_truncated_images_stay_refused_when_pillow_is_told_to_load_them(tmp_path, monkeypatch):
    from PIL import ImageFile

    from moir.media.images import ImageError, open_image

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    (tmp_path / "whole.png").write_bytes(png_bytes(8, 8))
    with pytest.raises(ImageError, match=r"whole\.png: PIL\.ImageFile\.LOAD_TRUNCATED_IMAGES is on"):
        open_image(tmp_path / "whole.png")


def test_a_tsv_that_is_not_utf8_is_named_with_its_line(tmp_path):
    tsv = tmp_path / "MMBench-Video.tsv"
    tsv.write_bytes(b"index\tvideo\tquestion\tanswer\n1\tv1\tWhat?\tyes\n2\tv2\tcaf\xe9?\tno\n")
    with pytest.raises(MMBenchVideoError, match=r"MMBench-Video\.tsv: line 3 is not UTF-8 text"):
        read_questions(tsv)


def test_a_json_annotation_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "train.json").write_bytes(b'[{"image": "a.jpg", "question": "caf\xe9?"}]')
    with pytest.raises(VizWizError, match=r"train\.json: not UTF-8 text"):
        convert_vizwiz(tmp_path, tmp_path / "manifests", splits=("train",))


def test_invalid_utf8_in_a_manifest_column_is_named_by_column_and_row(tmp_path):
    table = pa.Table.from_pylist([manifest_row(0, "a.png"), manifest_row(1, "b.png")], schema=SCHEMA)
    questions = pa.array([b"fine", b"caf\xe9?"], pa.binary()).view(pa.string())
    table = table.set_column(SCHEMA.get_field_index("question"), SCHEMA.field("question"), questions)
    pq.write_table(table.replace_schema_metadata({b"media_root": str(tmp_path).encode()}), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"m\.parquet: row 1 column 'question' is not valid UTF-8"):
        read_manifest(tmp_path / "m.parquet")


def test_a_truncated_shard_and_an_invalid_meta_json_are_named(tmp_path):
    dump_cache(tmp_path, CACHE_ITEMS, encode, encoder=ENCODER, shard_size=2)
    shard = tmp_path / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CacheMismatchError, match=r"shard-00000\.parquet: not a readable cache shard"):
        EncoderCache(tmp_path, encoder=ENCODER)
    (tmp_path / "meta.json").write_text('{"format": 2, "shards": [')
    with pytest.raises(CacheMismatchError, match=r"meta\.json: not a readable JSON file"):
        EncoderCache(tmp_path, encoder=ENCODER)


FULL_DISK = """
import os, resource, signal, sys
import pyarrow as pa
from moir.storage import write_table_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # writes past 100 kB fail, as on a full disk
table = pa.table({"x": pa.array([os.urandom(1000) for _ in range(1000)])})
try:
    write_table_atomic(table, sys.argv[1])
except OSError as error:
    print(error)
"""


def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path):
    """A write that fails part-way (a file-size limit stands in for a full disk: the same failed write())."""
    target = tmp_path / "out" / "table.parquet"
    target.parent.mkdir()
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(target)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{target}: cannot write" in result.stdout
    assert list(target.parent.iterdir()) == []


def test_a_failed_vizwiz_conversion_leaves_no_manifest(tmp_path):
    raw = tmp_path / "raw"
    (raw / "Annotations").mkdir(parents=True)
    (raw / "train").mkdir()
    (raw / "train" / "VizWiz_train_0.jpg").write_bytes(png_bytes(4, 4))
    (raw / "Annotations" / "train.json").write_text(json.dumps([vizwiz_entry("VizWiz_train_0.jpg")]))
    (raw / "Annotations" / "val.json").write_text("[{]")
    with pytest.raises(VizWizError, match=r"val\.json: not valid JSON"):
        convert_vizwiz(raw, tmp_path / "manifests", splits=("train", "val"))
    assert not (tmp_path / "manifests" / "train.parquet").exists()


def test_a_failed_extraction_rerun_removes_the_previous_frames(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mp4(raw / "good.mp4", grey_video(), 5)
    first = write_manifest([manifest_row(0, "good.mp4", "video")], tmp_path / "first.parquet", media_root=raw)
    extract_media(first, tmp_path / "media", FrameSampling(num_frames=2))
    assert (tmp_path / "media" / "frames.parquet").exists()
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(512))
    rows = [manifest_row(0, "good.mp4", "video"), manifest_row(1, "broken.mp4", "video")]
    second = write_manifest(rows, tmp_path / "second.parquet", media_root=raw)
    with pytest.raises(TooManyBadFiles, match="broken.mp4"):
        extract_media(second, tmp_path / "media", FrameSampling(num_frames=2), max_bad_share=0.0)
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == ["errors.parquet"]


# ------------------------------------------------------------------------------------------------ 8. resource caps


def test_frames_are_stored_at_most_max_side_pixels(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mp4(raw / "wide.mp4", grey_video(width=96, height=64), 5)
    manifest = write_manifest([manifest_row(0, "wide.mp4", "video")], tmp_path / "m.parquet", media_root=raw)
    extract_media(manifest, tmp_path / "small", FrameSampling(num_frames=2), max_side=48)
    frames = read_encoded_frames(tmp_path / "small" / "frames.parquet")["wide.mp4"]
    assert [decode_image(frame).shape for frame in frames] == [(32, 48, 3)] * 2  # aspect ratio kept
    extract_media(manifest, tmp_path / "full", FrameSampling(num_frames=2), max_side=None)
    frames = read_encoded_frames(tmp_path / "full" / "frames.parquet")["wide.mp4"]
    assert decode_image(frames[0]).shape == (64, 96, 3)
