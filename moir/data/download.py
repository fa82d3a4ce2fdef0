"""Pinned, verified, resumable downloads of the paper suite's datasets, and safe archive extraction.

Every source is a pinned URL (Hugging Face files at a fixed commit, or the dataset's official address) with the
checksum the upstream publishes: the Git LFS sha256 of Hugging Face files, the md5 that VLMEvalKit checks for the
MMBench-Video TSV. VizWiz publishes no checksum for its archives; those entries are unpinned, and `fetch` refuses
them unless asked (`allow_unpinned=True`, CLI `--allow-unpinned`), in which case it logs their sha256 and records
it in the completion marker so it can be pinned here.

A transfer writes `<file>.part` and resumes it with an HTTP Range request after an interruption (within the call,
`retries` times, or on the next run). A server that ignores the range restarts the file. A finished file is checked
against its size and checksum before it is renamed into place; a mismatch deletes the partial data and fails naming
the file and both digests. Archives (zip, tar) are checked entry by entry before anything is written: absolute
paths, `..`, links and device files are refused, as is any entry whose path would resolve outside the target
directory; so are two entries that land on the same path or a file where another entry needs a directory.
The whole archive is sized before anything is written, with sparse tar members counted at their expanded size: more
than `max_bytes` in all (default 256 GiB), more than `max_ratio` times the archive's size (default 200; the
datasets' archives hold images and JSON, far below that), or more than the free space of the target disk is
refused as a bomb, and the copy stops at each entry's declared size whatever the stream holds. A transfer stops
as soon as the server sends more than the pinned size. When every file of a dataset is in place, `download.complete.json` is written atomically; it is the
download rule's output, and a later run with a matching marker does nothing. With `remove_archives`, archives are
deleted once extracted (a run interrupted before the marker is written downloads them again).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from moir import runtime

from moir.storage import write_text_atomic

log = logging.getLogger(__name__)

MARKER = "download.complete.json"
CHUNK_SIZE = 1 << 20
USER_AGENT = "moir-data/0.1"
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
MAX_EXTRACTED_BYTES = 256 << 30  # everything one archive may extract to
MAX_EXTRACTION_RATIO = 200.0  # extracted size / archive size


class DownloadError(RuntimeError):
    """A transfer failed (after its retries); partial data is kept for the next run to resume."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its pinned size or checksum."""


class UnsafeArchiveError(ValueError):
    """An archive holds an entry that would land outside the target directory, a link, a device file, two entries
    for one path, or more data than the extraction caps allow."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it comes from, where it goes (relative to the dataset's raw directory), its
    pinned checksum (sha256, or md5 where that is all the upstream publishes) and whether to extract it."""

    url: str
    path: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    extract: bool = False

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None or self.md5 is not None


@dataclass(frozen=True)
class Source:
    """A dataset's files and where they are documented."""

    dataset: str
    homepage: str
    files: tuple[RemoteFile, ...]


def hf_file(repo: str, revision: str, path: str, *, sha256: str | None = None, md5: str | None = None,
            size: int | None = None) -> RemoteFile:
    """A file of a Hugging Face dataset repository at a fixed commit."""
    return RemoteFile(f"https://huggingface.co/datasets/{repo}/resolve/{revision}/{path}", path, sha256, md5, size)


SCIENCEQA_REPO, SCIENCEQA_REVISION = "derek-thomas/ScienceQA", "fc07d18c08ca52388c710215198e97abf565b9cb"
MMBENCH_VIDEO_REPO, MMBENCH_VIDEO_REVISION = "opencompass/MMBench-Video", "78bfb7c7f93a5ab1b0d587dc5f3754eaaea2c66d"
VIZWIZ_BASE = "https://vizwiz.cs.colorado.edu/VizWiz_final"

_MMBENCH_VIDEO_CHUNKS = (  # (sha256, size) of video_pkl/video_chunk_<i>.pkl, from the repository's LFS pointers
    ("1500b96c36a2c8e8b71f26f8f2d1c81d412f11c8e0ba49b72b941e604f3c1673", 12465932),
    ("97e94abdce96dfa1f22f83768429f922a66f10d0ab8106c5d284745892ca1871", 1912272292),
    ("6a883a373a92b3d646622ed7b5063ee58b2611c2fcd500bbf699075f025396b0", 1806526998),
    ("805044c5e449e3c6ef848412420c5915c817a037b513e7c9955802f0e2c5252a", 1706347152),
    ("f905b83e8eb01de410163dad385ed063c9a5f74046c26a06ddee0aa937f68aac", 1547987624),
    ("329551e410ab6fc43612d53dd743086a94a490d7ee5db9cd27cea2be4a33cc90", 1797792840),
    ("1d56f289b58e40fe49b0c915ebcdfa0df683cf2a5eace268d894c4e1cfacb1c6", 1495312409),
    ("5107a6e5ba64b250c1c36587546e805d3a0db0ad17a50975b3fad9992a656023", 1599436932),
    ("f5fe9b3d094f678a890dfff67b126ce65e685d24fe0ba9649c09ef61a8d7664b", 1471668797),
)

REGISTRY: dict[str, Source] = {
    "scienceqa": Source(
        "scienceqa",
        f"https://huggingface.co/datasets/{SCIENCEQA_REPO}",
        (
            hf_file(SCIENCEQA_REPO, SCIENCEQA_REVISION, "data/train-00000-of-00001-1028f23e353fbe3e.parquet",
                    sha256="62c90a28e3fb1bc0ad7bbcab1ac62b483ae6758291a655944d8f494bf6445745", size=377460993),
            hf_file(SCIENCEQA_REPO, SCIENCEQA_REVISION, "data/validation-00000-of-00001-6c7328ff6c84284c.parquet",
                    sha256="e66b5215ce71e748ade4ee629bc14fbf86762071d355a4fcd831581cc04d72d8", size=126235086),
            hf_file(SCIENCEQA_REPO, SCIENCEQA_REVISION, "data/test-00000-of-00001-f0e719df791966ff.parquet",
                    sha256="235e92d1f30155266df76bc9f28fc6e4fcb6bec2c6a8c7d67f9086ea6b392a84", size=122386007),
        ),
    ),
    "vizwiz": Source(
        "vizwiz",
        "https://vizwiz.org/tasks-and-datasets/vqa/",
        tuple(
            RemoteFile(f"{VIZWIZ_BASE}/{remote}", local, extract=True)
            for remote, local in (
                ("vqa_data/Annotations.zip", "Annotations.zip"),
                ("images/train.zip", "train.zip"),
                ("images/val.zip", "val.zip"),
                ("images/test.zip", "test.zip"),
            )
        ),
    ),
    "mmbench_video": Source(
        "mmbench_video",
        f"https://huggingface.co/datasets/{MMBENCH_VIDEO_REPO}",
        (
            hf_file(MMBENCH_VIDEO_REPO, MMBENCH_VIDEO_REVISION, "MMBench-Video.tsv", md5="98f7df3eb1007fc375ea6fe88a98e2ff"),
            *(
                hf_file(MMBENCH_VIDEO_REPO, MMBENCH_VIDEO_REVISION, f"video_pkl/video_chunk_{i}.pkl", sha256=digest, size=size)
                for i, (digest, size) in enumerate(_MMBENCH_VIDEO_CHUNKS)
            ),
        ),
    ),
}


# ------------------------------------------------------------------------------------------------ checksums


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, *, sha256: str | None = None, md5: str | None = None, size: int | None = None,
           label: str | None = None) -> None:
    """Raise ChecksumError, naming the file and both values, when `path` does not match what is pinned."""
    label = label or str(path)
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(f"{label}: size {path.stat().st_size} bytes, expected {size}")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                raise ChecksumError(f"{label}: {algorithm} {actual}, expected {expected}")


# ------------------------------------------------------------------------------------------------ transfers


class _IncompleteTransfer(Exception):
    pass


def _request(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _transfer(url: str, part: Path, size: int | None, timeout: float) -> None:
    """Bring `part` to the end of the remote file, resuming from its current length."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        offset = 0
    try:
        response = _request(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset and (size is None or offset == size):
            return  # the part already holds the whole file
        if error.code == 416:
            part.unlink(missing_ok=True)
            raise _IncompleteTransfer(f"range {offset}- not satisfiable; restarting") from error
        raise
    with response:
        if offset and response.status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _IncompleteTransfer(f"asked for bytes {offset}-, got {response.headers.get('Content-Range')!r}; restarting")
        elif offset:
            log.info("%s: server ignored the range request; restarting from byte 0", url)
            offset = 0
        length = response.headers.get("Content-Length")
        expected_end = offset + int(length) if length is not None else size
        if size is not None and expected_end is not None and expected_end > size:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"{url}: the server announces {expected_end} bytes, the file is pinned at {size}; refused"
            )
        with open(part, "r+b" if offset else "wb") as file, runtime.progress(
            total=expected_end, initial=offset, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"), leave=False
        ) as progress:
            file.seek(offset)
            file.truncate()
            while chunk := response.read(CHUNK_SIZE):
                if size is not None and file.tell() + len(chunk) > size:
                    file.close()
                    part.unlink(missing_ok=True)
                    raise ChecksumError(f"{url}: the server sent more than the pinned {size} bytes; transfer stopped")
                file.write(chunk)
                progress.update(len(chunk))
            file.flush()
            os.fsync(file.fileno())
            received = file.tell()
    if expected_end is not None and received < expected_end:
        raise _IncompleteTransfer(f"connection closed at byte {received} of {expected_end}")


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
                  size: int | None = None, retries: int = 3, timeout: float = 60.0, backoff: float = 2.0) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify it, and move it into place.

    An existing `dest` that matches the pinned checksum is kept without any request. Interrupted transfers are
    retried `retries` times with exponential backoff, each resuming where the last stopped.
    """
    dest = Path(dest)
    if dest.exists():
        verify(dest, sha256=sha256, md5=md5, size=size)
        log.info("%s: present and verified", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, size, timeout)
            break
        except urllib.error.HTTPError as error:
            if error.code not in RETRYABLE_HTTP or attempt == retries:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
            reason = f"HTTP {error.code}"
        except (_IncompleteTransfer, urllib.error.URLError, http.client.HTTPException, OSError) as error:
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: transfer failed after {retries + 1} attempt(s) ({error}); {kept} bytes kept in {part}, "
                    f"the next run resumes from there"
                ) from error
            reason = str(error)
        delay = backoff * 2**attempt
        log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", url, reason, delay, attempt + 2, retries + 1)
        time.sleep(delay)
    try:
        verify(part, sha256=sha256, md5=md5, size=size, label=f"{dest} (from {url})")
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


# ------------------------------------------------------------------------------------------------ archives


def _checked_target(archive: Path, name: str, root: Path) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in pure.parts:
        raise UnsafeArchiveError(f"{archive}: entry {name!r} has an absolute or parent-relative path; refused")
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"{archive}: entry {name!r} would be written outside {root}; refused")
    return target


def _zip_members(archive: Path, zf: zipfile.ZipFile, root: Path) -> list[tuple[Path, zipfile.ZipInfo | None, int]]:
    members = []
    for info in zf.infolist():
        kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type; 0 when the archiver recorded none
        if kind == stat.S_IFLNK:
            raise UnsafeArchiveError(f"{archive}: entry {info.filename!r} is a symbolic link; refused")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(f"{archive}: entry {info.filename!r} is not a regular file or directory; refused")
        target = _checked_target(archive, info.filename, root)
        members.append((target, None, 0) if info.is_dir() else (target, info, info.file_size))
    return members


def _tar_members(archive: Path, tf: tarfile.TarFile, root: Path) -> list[tuple[Path, tarfile.TarInfo | None, int]]:
    members = []
    for info in tf.getmembers():
        if info.issym() or info.islnk():
            raise UnsafeArchiveError(f"{archive}: entry {info.name!r} is a link (to {info.linkname!r}); refused")
        if not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"{archive}: entry {info.name!r} is not a regular file or directory; refused")
        target = _checked_target(archive, info.name, root)
        members.append((target, None, 0) if info.isdir() else (target, info, info.size))  # sparse: expanded size
    return members


def _check_layout(archive: Path, members: list[tuple[Path, object, int]], root: Path) -> None:
    """Refuse two entries for one path (a file twice, a file and a directory) and a file that another entry
    needs as a directory: extracting either would silently keep only one of them."""
    kinds: dict[Path, str] = {}
    for target, info, _ in members:
        kind = "directory" if info is None else "file"
        if target in kinds and (kind == "file" or kinds[target] == "file"):
            raise UnsafeArchiveError(
                f"{archive}: two entries for {target.relative_to(root)} ({kinds[target]} and {kind}); refused"
            )
        kinds[target] = kind
    for target, kind in kinds.items():
        for parent in target.relative_to(root).parents:
            if kinds.get(root / parent) == "file":
                raise UnsafeArchiveError(
                    f"{archive}: entry {target.relative_to(root)} lies under {parent}, which is a file entry; refused"
                )


def _check_size(archive: Path, members: list[tuple[Path, object, int]], root: Path, max_bytes: int,
                max_ratio: float) -> int:
    """The total size the archive extracts to, refused past the caps or the free space of the target disk."""
    total = sum(size for _, _, size in members)
    archive_size = max(archive.stat().st_size, 1)
    if total > max_bytes:
        raise UnsafeArchiveError(f"{archive}: extracts to {total} bytes, more than max_bytes {max_bytes}; refused")
    if total > max_ratio * archive_size:
        raise UnsafeArchiveError(
            f"{archive}: extracts to {total} bytes from {archive_size} ({total / archive_size:.0f}x, more than "
            f"max_ratio {max_ratio:g}x); refused as an archive bomb"
        )
    free = shutil.disk_usage(root).free
    if total > free:
        raise UnsafeArchiveError(f"{archive}: extracts to {total} bytes, {root} has {free} bytes free; refused")
    return total


def _write_member(archive: Path, source, target: Path, size: int) -> None:
    """Copy one entry, never more than its declared `size` bytes (the sizing check relied on it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            written = 0
            while chunk := source.read(min(CHUNK_SIZE, size - written + 1)):
                written += len(chunk)
                if written > size:
                    raise UnsafeArchiveError(
                        f"{archive}: entry {target.name} holds more than its declared {size} bytes"
                    )
                out.write(chunk)
        os.replace(tmp, target)
    except OSError as error:
        raise OSError(error.errno, f"{target}: cannot extract from {archive} ({error.strerror or error})") from error
    finally:
        tmp.unlink(missing_ok=True)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *, max_bytes: int = MAX_EXTRACTED_BYTES,
                 max_ratio: float = MAX_EXTRACTION_RATIO) -> int:
    """Extract a zip or tar archive into `dest` after checking every entry; returns the number of files.

    Nothing is written when any entry is refused or the archive extracts to more than `max_bytes` or `max_ratio`
    times its own size (see the module docstring). File modes from the archive are not applied; extracted files
    get the default permissions.
    """
    archive, root = Path(archive), Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if zipfile.is_zipfile(archive):
        opened, list_members = zipfile.ZipFile(archive), _zip_members
        open_member = opened.open
    elif tarfile.is_tarfile(archive):
        opened, list_members = tarfile.open(archive), _tar_members
        open_member = opened.extractfile
    else:
        raise UnsafeArchiveError(f"{archive}: not a zip or tar archive")
    with opened:
        members = list_members(archive, opened, root)  # every entry checked before anything is written
        _check_layout(archive, members, root)
        _check_size(archive, members, root, max_bytes, max_ratio)
        for target, info, size in runtime.progress(members, desc=f"extract {archive.name}", unit="file", leave=False):
            if info is None:
                target.mkdir(parents=True, exist_ok=True)
            else:
                with open_member(info) as source:
                    _write_member(archive, source, target, size)
    return sum(info is not None for _, info, _ in members)


# ------------------------------------------------------------------------------------------------ datasets


def _marker_matches(marker: Path, source: Source) -> bool:
    """Whether `marker` records exactly `source`'s files (and, where pinned, their checksums)."""
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    files = recorded.get("files", [])
    if recorded.get("dataset") != source.dataset or len(files) != len(source.files):
        return False
    for entry, remote in zip(files, source.files):
        same = (entry.get("url"), entry.get("path"), entry.get("md5"), entry.get("extract"))
        if same != (remote.url, remote.path, remote.md5, remote.extract):
            return False
        if remote.sha256 is not None and entry.get("sha256") != remote.sha256:
            return False
    return True


def fetch(source: Source, out_dir: str | os.PathLike, *, allow_unpinned: bool = False, retries: int = 3,
          timeout: float = 60.0, backoff: float = 2.0, remove_archives: bool = False,
          max_extracted_bytes: int = MAX_EXTRACTED_BYTES, max_extraction_ratio: float = MAX_EXTRACTION_RATIO) -> Path:
    """Download, verify and extract every file of `source` into `out_dir`; returns the completion marker.
    Archives are extracted under the caps of `safe_extract` (`max_extracted_bytes`, `max_extraction_ratio`)."""
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if marker.exists() and _marker_matches(marker, source):
        log.info("%s: complete (%s); nothing to do", source.dataset, marker)
        return marker
    unpinned = [remote.url for remote in source.files if not remote.pinned]
    if unpinned and not allow_unpinned:
        raise DownloadError(
            f"{source.dataset}: no published checksum for {unpinned}; pass allow_unpinned=True (--allow-unpinned) to "
            f"download them anyway and record their sha256 in {marker}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for remote in source.files:
        dest = out_dir / remote.path
        download_file(remote.url, dest, sha256=remote.sha256, md5=remote.md5, size=remote.size,
                      retries=retries, timeout=timeout, backoff=backoff)
        record = {"url": remote.url, "path": remote.path, "sha256": remote.sha256 or file_digest(dest),
                  "md5": remote.md5, "extract": remote.extract, "bytes": dest.stat().st_size}
        if not remote.pinned:
            log.warning("%s: unpinned file downloaded; its sha256 is %s (pin it in moir/data/download.py)",
                        remote.url, record["sha256"])
        if remote.extract:
            count = safe_extract(dest, dest.parent, max_bytes=max_extracted_bytes, max_ratio=max_extraction_ratio)
            log.info("%s: extracted %d files into %s", dest, count, dest.parent)
            if remove_archives:
                dest.unlink()
        records.append(record)
    summary = {"dataset": source.dataset, "homepage": source.homepage, "files": records}
    write_text_atomic(marker, json.dumps(summary, indent=2))
    log.info("%s: complete -> %s", source.dataset, marker)
    return marker

