"""Verified downloads (retries, Range resume, mirrors, checksums) against a local faulty server, and safe
archive extraction (tar/zip/.deb) refusing every way out of the target."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from deltaenergy import download as dl
from fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"retries": 3, "backoff": 0.001, "timeout": 5, "progress": False}


@pytest.fixture
def server():
    with FaultServer() as srv:
        srv.files["/a.bin"] = PAYLOAD
        srv.files["/mirror2/a.bin"] = PAYLOAD
        yield srv


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_download_verifies_and_renames(server, tmp_path):
    target = tmp_path / "a.bin"
    assert dl.download(server.url("/a.bin"), target, SHA, what="t", **FAST) == server.url("/a.bin")
    assert target.read_bytes() == PAYLOAD and _leftovers(tmp_path) == ["a.bin"]


def test_500s_then_success_with_backoff(server, tmp_path):
    server.faults["/a.bin"] = ["500", "500"]
    dl.download(server.url("/a.bin"), tmp_path / "a.bin", SHA, what="t", **FAST)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/a.bin"] * 3


def test_persistent_500s_fail_with_url_and_fix(server, tmp_path):
    server.faults["/a.bin"] = ["500"] * 10
    with pytest.raises(dl.DownloadError, match=r"HTTP 500.*Fix: check the network") as err:
        dl.download(server.url("/a.bin"), tmp_path / "a.bin", SHA, what="dataset x", **{**FAST, "retries": 2})
    assert "dataset x" in str(err.value) and server.url("/a.bin") in str(err.value)
    assert len(server.requests) == 3 and not (tmp_path / "a.bin").exists()


def test_truncated_response_is_resumed_with_range(server, tmp_path):
    server.faults["/a.bin"] = ["truncate"]
    dl.download(server.url("/a.bin"), tmp_path / "a.bin", SHA, what="t", **FAST)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/a.bin", None), ("/a.bin", f"bytes={len(PAYLOAD) // 2}-")]
    assert _leftovers(tmp_path) == ["a.bin"]


def test_existing_part_file_is_resumed(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:1000])
    dl.download(server.url("/a.bin"), tmp_path / "a.bin", SHA, what="t", **FAST)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/a.bin", "bytes=1000-")]


def test_server_ignoring_range_restarts_the_file(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(b"garbage that must not stay in front")
    server.faults["/a.bin"] = ["norange"]
    dl.download(server.url("/a.bin"), tmp_path / "a.bin", SHA, what="t", **FAST)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_wrong_checksum_names_dataset_url_digests_and_fix(server, tmp_path):
    wrong = "sha256:" + "0" * 64
    with pytest.raises(dl.ChecksumError) as err:
        dl.download(server.url("/a.bin"), tmp_path / "a.bin", wrong, what="dataset fashion-mnist", **FAST)
    message = str(err.value)
    for needle in ("dataset fashion-mnist", server.url("/a.bin"), "0" * 64, SHA.split(":")[1], "Fix: delete",
                   "bring your own"):
        assert needle in message
    assert _leftovers(tmp_path) == []  # neither the target nor a .part


def test_mirrors_in_order_after_404_and_after_a_bad_file(server, tmp_path):
    urls = [server.url("/missing.bin"), server.url("/a.bin")]
    assert dl.download(urls, tmp_path / "a.bin", SHA, what="t", **FAST) == urls[1]
    server.files["/bad.bin"] = PAYLOAD[::-1]
    urls = [server.url("/bad.bin"), server.url("/mirror2/a.bin")]
    assert dl.download(urls, tmp_path / "b.bin", SHA, what="t", **FAST) == urls[1]
    assert (tmp_path / "b.bin").read_bytes() == PAYLOAD


def test_existing_target_is_verified_not_downloaded(server, tmp_path):
    (tmp_path / "a.bin").write_bytes(PAYLOAD)
    assert dl.download(server.url("/a.bin"), tmp_path / "a.bin", SHA, what="t", **FAST) is None
    (tmp_path / "c.bin").write_bytes(b"someone else's file")
    with pytest.raises(dl.ChecksumError, match="Fix: delete"):
        dl.download(server.url("/a.bin"), tmp_path / "c.bin", SHA, what="t", **FAST)
    assert server.requests == []


def test_digest_algorithms(server, tmp_path):
    """sha256, or md5 where a source publishes only that; another algorithm is refused before any request;
    None (no published digest: the caller records one on first use) downloads without verifying."""
    sha1 = "sha1:" + hashlib.sha1(PAYLOAD).hexdigest()
    with pytest.raises(ValueError, match="sha256:<hex>"):
        dl.download(server.url("/a.bin"), tmp_path / "d.bin", sha1, what="t", **FAST)
    assert server.requests == [] and not (tmp_path / "d.bin").exists()
    md5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
    assert dl.download(server.url("/a.bin"), tmp_path / "d.bin", md5, what="t", **FAST) == server.url("/a.bin")
    with pytest.raises(dl.ChecksumError, match=f"expected md5 {'0' * 32}, found {md5[4:]}"):
        dl.verify(tmp_path / "d.bin", "md5:" + "0" * 32, "t")
    assert dl.download(server.url("/a.bin"), tmp_path / "e.bin", None, what="t", **FAST) == server.url("/a.bin")
    assert (tmp_path / "e.bin").read_bytes() == PAYLOAD


# --------------------------------------------------------------------------- archives


Member = tuple[tarfile.TarInfo, bytes]


def _write_tar(tar: tarfile.TarFile, members: list[Member]) -> None:
    for info, data in members:
        tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def _tar(path: Path, members: list[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        _write_tar(tar, members)
    return path


def _file(name: str, data: bytes = b"hello") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def _device(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, b""


@pytest.mark.parametrize("mode", ["w:gz", "w:xz", "w:bz2", "w"])
def test_tar_extracts_with_inner_links_and_marker_last(tmp_path, mode):
    archive = _tar(tmp_path / "a.tar", [_file("pkg/a.txt", b"A"), _file("pkg/sub/b.txt", b"B"),
                                        _link("pkg/sub/link", "../a.txt"),
                                        _link("pkg/hard", "pkg/a.txt", tarfile.LNKTYPE)], mode)
    target = dl.extract_archive(archive, tmp_path / "out")
    assert (target / "pkg/a.txt").read_bytes() == b"A" and (target / "pkg/sub/link").read_bytes() == b"A"
    assert (target / "pkg/hard").read_bytes() == b"A" and dl.is_complete(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "out", "out.complete"]


def test_zip_extracts(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("d/a.txt", "A")
        zf.writestr("d/e/", "")
    target = dl.extract_archive(tmp_path / "a.zip", tmp_path / "out")
    assert (target / "d/a.txt").read_text() == "A" and (target / "d/e").is_dir() and dl.is_complete(target)


def _zip(path: Path, name: str, mode: int | None = None, data: str = "x") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


EVIL = {
    "absolute": lambda p: _tar(p / "e.tar.gz", [_file("ok.txt"), _file("/tmp/evil_abs.txt")]),
    "dotdot": lambda p: _tar(p / "e.tar.gz", [_file("ok.txt"), _file("../evil.txt")]),
    "dotdot_inner": lambda p: _tar(p / "e.tar.gz", [_file("ok.txt"), _file("a/../../evil.txt")]),
    "symlink_absolute": lambda p: _tar(p / "e.tar.gz", [_link("ok", "/etc/passwd")]),
    "symlink_dotdot": lambda p: _tar(p / "e.tar.gz", [_link("a/link", "../../outside"),
                                                       _file("a/link/evil.txt")]),
    "hardlink_absolute": lambda p: _tar(p / "e.tar.gz", [_link("h", "/etc/passwd", tarfile.LNKTYPE)]),
    "hardlink_dotdot": lambda p: _tar(p / "e.tar.gz", [_link("h", "../sentinel.txt", tarfile.LNKTYPE)]),
    "device": lambda p: _tar(p / "e.tar.gz", [_file("ok.txt"), _device("dev/null2")]),
    "zip_dotdot": lambda p: _zip(p / "e.zip", "../evil.txt"),
    "zip_absolute": lambda p: _zip(p / "e.zip", "/tmp/evil_abs.txt"),
    "zip_symlink": lambda p: _zip(p / "e.zip", "link", 0o120777, "/etc/passwd"),
}


@pytest.mark.parametrize("kind", list(EVIL))
def test_hostile_archives_are_refused_and_nothing_is_written(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    (work / "sentinel.txt").write_text("untouched")
    archive = EVIL[kind](work)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(dl.UnsafeArchiveError, match=re.escape(str(archive)) + ".*refusing"):
        dl.extract_archive(archive, work / "out")
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == before  # no target, no marker, no temporary folder, nothing outside
    assert (work / "sentinel.txt").read_text() == "untouched" and not Path("/tmp/evil_abs.txt").exists()


def _deb(path: Path, data_tar: bytes) -> Path:
    """A minimal Debian package: ar archive with debian-binary, control.tar.xz and data.tar.xz."""
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in (("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", data_tar)):
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
        out.write(data + (b"\n" if len(data) % 2 else b""))
    path.write_bytes(out.getvalue())
    return path


def _tar_bytes(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        _write_tar(tar, members)
    return buf.getvalue()


def test_deb_subfolder_extraction_checks_only_what_it_extracts(tmp_path):
    data = _tar_bytes([_file("./usr/share/doc/x/changelog", b"c"), _link("./usr/share/doc/y", "/usr/share/doc/x"),
                       _file("./usr/share/wordnet/index.noun", b"dog n\n"),
                       _link("./usr/share/wordnet/alias", "index.noun")])
    deb = _deb(tmp_path / "x.deb", data)
    target = dl.extract_archive(deb, tmp_path / "wordnet", subdir="usr/share/wordnet")
    assert sorted(p.name for p in target.iterdir()) == ["alias", "index.noun"]
    assert (target / "alias").read_bytes() == b"dog n\n" and dl.is_complete(target)
    escaping = _deb(tmp_path / "y.deb", _tar_bytes([_link("./usr/share/wordnet/l", "../doc/x/changelog")]))
    with pytest.raises(dl.UnsafeArchiveError, match="outside the target"):
        dl.extract_archive(escaping, tmp_path / "w2", subdir="usr/share/wordnet")
    with pytest.raises(dl.UnsafeArchiveError, match="no folder"):
        dl.extract_archive(deb, tmp_path / "w3", subdir="usr/share/nothing")
    assert not (tmp_path / "w2").exists() and not (tmp_path / "w3").exists()
    (tmp_path / "a.deb").write_bytes(b"not an ar archive")
    with pytest.raises(dl.UnsafeArchiveError, match="not a Debian package"):
        dl.extract_archive(tmp_path / "a.deb", tmp_path / "w4")


def test_nothing_downloaded_is_unpickled():
    """No code loads arrays or checkpoints with pickling on, and nothing uses pickle at all (Animal-MNIST,
    published only as pickles, was replaced for this reason)."""
    src = ROOT / "src" / "deltaenergy"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "allow_pickle=True" not in text, path
        assert not re.search(r"torch\.load\((?![^)]*weights_only=True)", text), path
        # Catching pickle.UnpicklingError (a refused weights_only load) unpickles nothing.
        assert not re.search(r"pickle\.(?!UnpicklingError\b)|Unpickler\b", text), f"{path} uses pickle"
