"""Verified downloads and safe archive extraction (urllib only; nothing downloaded is ever unpickled).

Conventions:

- A digest is ``"sha256:<hex>"``, or ``"md5:<hex>"`` where a source publishes only an MD5 sum.
- :func:`download` writes ``<target>.part`` next to the target, resumes it with an HTTP Range request,
  retries connection errors, truncated bodies, 429 and 5xx with exponential back-off (``backoff *
  2**attempt`` seconds), tries mirrors in order, and renames the part file to the target only after its
  digest matched. An existing target is verified, not downloaded again (bring your own archive).
- :func:`extract_archive` (tar, tar.gz/xz/bz2, zip, Debian ``.deb``) checks every member before writing
  anything: absolute paths, ``..``, device files and symlinks or hardlinks leaving the target are
  refused. Members go to a temporary folder next to the target, which is renamed into place; the
  completion marker (:func:`mark_complete`) is written last, so a partial tree is never marked complete.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from deltaenergy.io import atomic_path

log = logging.getLogger(__name__)

DIGEST_ALGORITHMS = ("sha256", "md5")
COMPLETE_SUFFIX = ".complete"


class DownloadError(RuntimeError):
    """A file could not be fetched from any mirror."""


class ChecksumError(DownloadError):
    """A fetched or existing file does not match its published digest."""


class UnsafeArchiveError(ValueError):
    """An archive member would escape the target folder or is not a plain file, folder or inner link."""


def _parse_digest(digest: str, what: str) -> tuple[str, str]:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm not in DIGEST_ALGORITHMS or not hexdigest:
        raise ValueError(f"{what}: digest {digest!r} must look like 'sha256:<hex>' (or 'md5:<hex>')")
    return algorithm, hexdigest.lower()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, digest: str, what: str, url: str | None = None) -> None:
    """Raise :class:`ChecksumError` naming ``what``, the URL, both digests and the fix on a mismatch."""
    algorithm, expected = _parse_digest(digest, what)
    found = file_digest(path, algorithm)
    if found != expected:
        origin = f" downloaded from {url}" if url else ""
        raise ChecksumError(
            f"{what}: checksum mismatch for {path}{origin}: expected {algorithm} {expected}, found {found}. "
            f"Fix: delete {path} and run again; if it fails again the mirror serves a different file "
            f"(check the URL or add another mirror), or bring your own copy of the archive with that "
            f"{algorithm} and place it at {path}"
        )


class _Retry(Exception):
    """A transient failure: wait and try the same mirror again."""


def _fetch_once(url: str, part: Path, timeout: float, progress: bool, what: str) -> None:
    """One request: append to ``part`` (Range) or start it over; raise :class:`_Retry` on transient errors."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "deltaenergy"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part file already holds everything (or more): verify it
            return
        if err.code == 429 or err.code >= 500:
            raise _Retry(f"HTTP {err.code}") from err
        raise
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as err:
        raise _Retry(str(err)) from err
    with response:
        resumed = have and response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise DownloadError(f"{what}: {url} answered the range request for byte {have} with "
                                f"{response.headers.get('Content-Range')!r}")
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length is not None else None
        done = start
        with open(part, "ab" if resumed else "wb") as fh, tqdm(
            total=expected, initial=start, unit="B", unit_scale=True, desc=what, disable=not progress
        ) as bar:
            try:
                for block in iter(lambda: response.read(1 << 16), b""):
                    fh.write(block)
                    done += len(block)
                    bar.update(len(block))
            except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as err:
                raise _Retry(f"connection lost after {done} bytes: {err}") from err
    if expected is not None and done < expected:
        raise _Retry(f"truncated: {done} of {expected} bytes")


def download(
    urls: str | Iterable[str],
    target: str | os.PathLike,
    digest: str | None,
    *,
    what: str,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> str | None:
    """Fetch ``target`` from the first mirror of ``urls`` that serves it with ``digest``.

    Returns the URL used, or ``None`` when ``target`` already existed and verified. Each mirror gets
    ``retries + 1`` attempts for transient failures; 4xx answers and checksum mismatches move on to the
    next mirror. Raises :class:`ChecksumError` (a file with another digest) or :class:`DownloadError`.
    ``digest=None`` (a source that publishes no checksum) verifies nothing: the caller records the
    file's digest on first use (see :mod:`deltaenergy.data.registry`).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    target = Path(target)
    if digest is not None:
        _parse_digest(digest, what)
    if target.exists():
        if digest is not None:
            verify(target, digest, what)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    failures: list[str] = []
    mismatch: ChecksumError | None = None
    for url in urls:
        for attempt in range(retries + 1):
            try:
                _fetch_once(url, part, timeout, progress, what)
            except _Retry as err:
                failures.append(f"{url}: {err}")
                if attempt < retries:
                    delay = backoff * 2**attempt
                    log.warning("%s: %s; retrying in %.3g s", what, err, delay)
                    time.sleep(delay)
                continue
            except (urllib.error.HTTPError, urllib.error.URLError, ValueError) as err:
                failures.append(f"{url}: {err}")
                break
            try:
                if digest is not None:
                    verify(part, digest, what, url)
            except ChecksumError as err:
                part.unlink()
                mismatch = err
                failures.append(f"{url}: checksum mismatch")
                break
            os.replace(part, target)
            return url
    if mismatch is not None:
        raise mismatch
    raise DownloadError(
        f"{what}: could not download {target.name} from {len(urls)} mirror(s): {'; '.join(failures)}. "
        f"Fix: check the network or proxy and run again (a partial {part.name} is resumed), or bring your "
        f"own copy{f' with {digest}' if digest else ''} and place it at {target}"
    )


# --------------------------------------------------------------------------- archives


def _safe_name(name: str, archive: Path) -> str:
    """Normalised relative member path; refuses absolute paths and ``..``."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} points outside the target ('..'); refusing")
    return norm


def _resolved(link_from: str, target: str) -> str:
    return posixpath.normpath(posixpath.join(posixpath.dirname(link_from), target))


def _inside(link_from: str, target: str) -> bool:
    """Whether link ``target`` (relative to the member's folder, or archive-relative when ``link_from`` is
    empty) stays inside the archive root."""
    if target.startswith("/"):
        return False
    norm = _resolved(link_from, target)
    return norm != ".." and not norm.startswith("../")


def _under(name: str, root: str) -> bool:
    return not root or name == root or name.startswith(root + "/")


def _tar_members(tar: tarfile.TarFile, archive: Path, root: str) -> list[tarfile.TarInfo]:
    """Members under ``root`` (all when empty), each checked; every member's name is checked."""
    chosen = []
    for member in tar.getmembers():
        name = _safe_name(member.name, archive)
        if not _under(name, root):
            continue
        where = f"the target ({root})" if root else "the target"
        link = member.linkname
        if member.issym() and not (_inside(name, link) and _under(_resolved(name, link), root)):
            raise UnsafeArchiveError(
                f"{archive}: symlink {member.name!r} -> {member.linkname!r} points outside {where}; refusing")
        if member.islnk() and not (_inside("", member.linkname)
                                   and _under(posixpath.normpath(member.linkname), root)):
            raise UnsafeArchiveError(
                f"{archive}: hardlink {member.name!r} -> {member.linkname!r} points outside {where}; refusing")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} is a device, FIFO or other special file; refusing")
        chosen.append(member)
    return chosen


def _zip_members(zf: zipfile.ZipFile, archive: Path, root: str) -> list[zipfile.ZipInfo]:
    """Members under ``root`` (all when empty); links and special files are refused."""
    chosen = []
    for info in zf.infolist():
        if not _under(_safe_name(info.filename, archive).rstrip("/"), root):
            continue
        mode = info.external_attr >> 16  # Unix mode; file type 0 when the creator recorded none
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(
                f"{archive}: member {info.filename!r} is a link or special file (mode {oct(mode)}); refusing")
        chosen.append(info)
    return chosen


def _deb_data_tar(archive: Path) -> bytes:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive)."""
    with open(archive, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise UnsafeArchiveError(f"{archive} is not a Debian package (no ar magic)")
        while header := fh.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            data = fh.read(size)
            fh.read(size % 2)
            if name.startswith("data.tar"):
                return data
    raise UnsafeArchiveError(f"{archive}: no data.tar member; not a Debian binary package")


def _open_tar(archive: Path) -> tarfile.TarFile:
    if archive.name.endswith(".deb"):
        return tarfile.open(fileobj=io.BytesIO(_deb_data_tar(archive)), mode="r:*")
    return tarfile.open(archive, mode="r:*")


def complete_marker(target: str | os.PathLike) -> Path:
    """Path of the marker saying ``target`` is complete (a sibling file ``<target>.complete``)."""
    target = Path(target)
    return target.with_name(target.name + COMPLETE_SUFFIX)


def mark_complete(target: str | os.PathLike, text: str = "") -> None:
    """Write ``target``'s completion marker (atomically); call it last."""
    with atomic_path(complete_marker(target)) as tmp:
        tmp.write_text(text)


def is_complete(target: str | os.PathLike) -> bool:
    """Whether ``target`` exists and its completion marker was written."""
    return Path(target).exists() and complete_marker(target).exists()


def extract_archive(
    archive: str | os.PathLike, target: str | os.PathLike, *, subdir: str | None = None, mark: bool = True
) -> Path:
    """Safely extract ``archive`` (or only its folder ``subdir``) to the folder ``target``.

    Every member is checked before anything is written. Extraction goes to a temporary folder next to
    ``target``, which then replaces ``target``; the completion marker is written last (``mark=False``
    leaves that to the caller, who may have more to do). Returns ``target``.
    """
    archive, target = Path(archive), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    complete_marker(target).unlink(missing_ok=True)
    root = "" if subdir is None else _safe_name(subdir, archive)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        if zipfile.is_zipfile(archive) and not archive.name.endswith(".deb"):
            with zipfile.ZipFile(archive) as zf:
                for info in _zip_members(zf, archive, root):
                    out = tmp / _safe_name(info.filename, archive)
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        else:
            try:
                tar = _open_tar(archive)
            except tarfile.TarError as err:
                raise UnsafeArchiveError(f"{archive} is not a readable tar, zip or .deb archive: {err}") from err
            with tar:
                members = _tar_members(tar, archive, root)
                tar.extractall(tmp, members=members, filter="data")  # the stdlib's guard on top of ours
        source = tmp / root if root else tmp
        if not source.is_dir():
            raise UnsafeArchiveError(f"{archive} has no folder {subdir!r}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(source, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if mark:
        mark_complete(target, f"{archive.name}\n")
    return target
