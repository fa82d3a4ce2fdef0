"""Downloads against a real HTTP server on 127.0.0.1: verification, resumed transfers, checksum mismatches,
completion markers, and archives that try to write outside their directory."""

import hashlib
import io
import json
import re
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moir.data.download import (
    MARKER,
    REGISTRY,
    ChecksumError,
    DownloadError,
    RemoteFile,
    Source,
    UnsafeArchiveError,
    download_file,
    fetch,
    safe_extract,
)

PAYLOAD = bytes(range(256)) * 40  # 10 KiB


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.files`; honours `Range: bytes=N-` unless `server.ignore_range`; `server.cut[path] = n` makes
    the next response for `path` stop after n body bytes and close the connection."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/redirect/"):  # like Hugging Face's /resolve/ URLs, which redirect to a CDN
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect"))
            self.end_headers()
            return
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if requested and not server.ignore_range:
            start = int(requested.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cut = server.cut.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.cut, httpd.ignore_range = {}, [], {}, False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_fetch_verifies_extracts_marks_complete_and_then_does_nothing(server, tmp_path):
    archive = _zip({"images/a.jpg": b"jpeg-a", "images/sub/b.jpg": b"jpeg-b"})
    server.files = {"/table.tsv": PAYLOAD, "/images.zip": archive}
    source = Source("toy", "https://example.org", (
        RemoteFile(server.url + "/table.tsv", "table.tsv", sha256=_sha256(PAYLOAD), size=len(PAYLOAD)),
        RemoteFile(server.url + "/images.zip", "images.zip", md5=hashlib.md5(archive).hexdigest(), extract=True),
    ))
    marker = fetch(source, tmp_path / "raw", backoff=0)
    assert marker == tmp_path / "raw" / MARKER
    assert (tmp_path / "raw" / "table.tsv").read_bytes() == PAYLOAD
    assert (tmp_path / "raw" / "images" / "sub" / "b.jpg").read_bytes() == b"jpeg-b"
    recorded = json.loads(marker.read_text())
    assert [f["sha256"] for f in recorded["files"]] == [_sha256(PAYLOAD), _sha256(archive)]
    assert not list((tmp_path / "raw").glob("*.part"))
    requests = len(server.requests)
    fetch(source, tmp_path / "raw", backoff=0)
    assert len(server.requests) == requests
    repinned = Source("toy", source.homepage, (RemoteFile(source.files[0].url, "table.tsv", sha256=_sha256(b"new")),
                                               source.files[1]))
    with pytest.raises(ChecksumError, match=r"table\.tsv: sha256"):  # the marker vouches only for what it recorded
        fetch(repinned, tmp_path / "raw", backoff=0)


def test_interrupted_transfer_resumes_on_the_next_run(server, tmp_path):
    server.files = {"/big.bin": PAYLOAD}
    server.cut = {"/big.bin": 3000}
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match="3000 bytes kept in .*big.bin.part"):
        download_file(server.url + "/big.bin", dest, sha256=_sha256(PAYLOAD), retries=0)
    assert not dest.exists() and (tmp_path / "big.bin.part").stat().st_size == 3000
    download_file(server.url + "/big.bin", dest, sha256=_sha256(PAYLOAD), retries=0)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "big.bin.part").exists()
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=3000-")]


def test_interrupted_transfer_resumes_within_one_call_through_a_redirect(server, tmp_path):
    server.files = {"/big.bin": PAYLOAD}
    server.cut = {"/big.bin": 1234}
    download_file(server.url + "/redirect/big.bin", tmp_path / "big.bin", sha256=_sha256(PAYLOAD), size=len(PAYLOAD),
                  retries=2, backoff=0)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/redirect/big.bin", None), ("/big.bin", None),
                               ("/redirect/big.bin", "bytes=1234-"), ("/big.bin", "bytes=1234-")]


def test_server_that_ignores_ranges_restarts_the_file(server, tmp_path):
    server.files, server.ignore_range = {"/big.bin": PAYLOAD}, True
    (tmp_path / "big.bin.part").write_bytes(b"stale bytes from elsewhere")
    download_file(server.url + "/big.bin", tmp_path / "big.bin", sha256=_sha256(PAYLOAD), retries=0)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_fails_and_keeps_nothing(server, tmp_path):
    server.files = {"/table.tsv": PAYLOAD}
    wrong = _sha256(b"something else")
    with pytest.raises(ChecksumError, match=rf"table\.tsv \(from {re.escape(server.url)}/table\.tsv\): sha256 "
                                            rf"{_sha256(PAYLOAD)}, expected {wrong}"):
        download_file(server.url + "/table.tsv", tmp_path / "table.tsv", sha256=wrong, retries=0)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "table.tsv").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="size 8 bytes, expected 10240"):
        download_file(server.url + "/table.tsv", tmp_path / "table.tsv", sha256=_sha256(PAYLOAD), size=len(PAYLOAD))


def test_http_errors_are_not_retried_forever(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "/missing", tmp_path / "missing", retries=3, backoff=0)
    assert len(server.requests) == 1


def test_unpinned_files_need_consent_and_get_their_digest_recorded(server, tmp_path):
    server.files = {"/annotations.json": b"[]"}
    source = Source("toy", "https://example.org", (RemoteFile(server.url + "/annotations.json", "annotations.json"),))
    with pytest.raises(DownloadError, match="no published checksum"):
        fetch(source, tmp_path)
    assert server.requests == []
    marker = fetch(source, tmp_path, allow_unpinned=True)
    assert json.loads(marker.read_text())["files"][0]["sha256"] == _sha256(b"[]")


def _tar(add) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        add(tf)
    return buffer.getvalue()


def _tar_file(tf, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _tar_link(tf, name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tf.addfile(info)


def _zip_symlink() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize("name, archive, message", [
    ("parent.zip", lambda: _zip({"ok.txt": b"fine", "../evil.txt": b"pwned"}), "parent-relative"),
    ("absolute.zip", lambda: _zip({"/tmp/evil.txt": b"pwned"}), "absolute"),
    ("symlink.zip", _zip_symlink, "symbolic link"),
    ("parent.tar.gz", lambda: _tar(lambda tf: (_tar_file(tf, "ok.txt"), _tar_file(tf, "a/../../evil.txt"))), "parent-relative"),
    ("symlink.tar.gz", lambda: _tar(lambda tf: _tar_link(tf, "escape", "/etc", tarfile.SYMTYPE)), "is a link"),
    ("hardlink.tar.gz", lambda: _tar(lambda tf: _tar_link(tf, "passwd", "/etc/passwd", tarfile.LNKTYPE)), "is a link"),
    ("device.tar.gz", lambda: _tar(lambda tf: _tar_link(tf, "null", "", tarfile.CHRTYPE)), "not a regular file"),
])
def test_malicious_archives_are_refused_before_anything_is_written(tmp_path, name, archive, message):
    path = tmp_path / name
    path.write_bytes(archive())
    target = tmp_path / "extracted" / "here"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(path, target)
    assert list(target.iterdir()) == [] and not (tmp_path / "extracted" / "evil.txt").exists()


def test_entries_through_an_existing_symlink_are_refused(tmp_path):
    outside, target = tmp_path / "outside", tmp_path / "target"
    outside.mkdir()
    target.mkdir()
    (target / "images").symlink_to(outside)
    (tmp_path / "a.zip").write_bytes(_zip({"images/evil.txt": b"pwned"}))
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(tmp_path / "a.zip", target)
    assert list(outside.iterdir()) == []


def test_tar_archives_extract(tmp_path):
    (tmp_path / "good.tar.gz").write_bytes(_tar(lambda tf: (_tar_file(tf, "dir/a.txt", b"A"), _tar_file(tf, "b.txt", b"B"))))
    assert safe_extract(tmp_path / "good.tar.gz", tmp_path / "out") == 2
    assert (tmp_path / "out" / "dir" / "a.txt").read_bytes() == b"A"


def test_registry_pins_revisions_and_checksums():
    for source in REGISTRY.values():
        for remote in source.files:
            assert remote.url.startswith("https://")
            if "huggingface.co" in remote.url:
                assert re.search(r"/resolve/[0-9a-f]{40}/", remote.url) and remote.pinned
            assert remote.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", remote.sha256)
            assert remote.md5 is None or re.fullmatch(r"[0-9a-f]{32}", remote.md5)


def test_cli_download_is_a_no_op_when_the_marker_matches_the_registry(tmp_path):
    from moir.data.__main__ import main

    source = REGISTRY["mmbench_video"]
    files = [{"url": f.url, "path": f.path, "sha256": f.sha256 or "0" * 64, "md5": f.md5, "extract": f.extract}
             for f in source.files]
    (tmp_path / MARKER).write_text(json.dumps({"dataset": "mmbench_video", "files": files}))
    assert main(["--log-level", "WARNING", "download", "mmbench_video", "--out", str(tmp_path)]) == 0
