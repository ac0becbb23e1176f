"""Where the demo's data come from: the installed registry package, else a verified download.

Every data source is a folder laid out as its Debian package installs it under the system data root
(``$DELTAENERGY_SYSTEM_DATA`` or ``/usr/share``). :func:`resolve` tries, in order,

1. the installed package's folder (``<system root>/<relative>``), then
2. a completed download under ``$DELTAENERGY_FETCHED_DATA`` (default ``resources/downloads``):
   ``<root>/<key>/`` holding the same files, next to its marker ``<key>.complete`` (a JSON record of
   what was fetched, written last by :func:`fetch_source`).

Download sources and checksums (never invented; see each entry's comment):

- ``fashion-mnist``: the four original IDX ``.gz`` files from the authors' canonical locations (their
  S3 site, then their GitHub repository), by SHA-256. The authors publish MD5 sums only (their README;
  torchvision's ``FashionMNIST.resources`` lists the same); the SHA-256 values here are of the files in
  Debian's source package (``dataset-fashion-mnist_0.0~git20200523.55506a9.orig.tar.xz``, signed
  ``.dsc``), whose MD5 sums equal the authors' published ones, so they are the authors' files. The
  binary package's ``.gz`` files are re-compressed by Debian (other bytes) but decompress to identical
  IDX data (checked), so both sources give the same images.
- ``gimp-patterns``: GIMP's source tarball (``data/patterns`` only), SHA-256 as pinned in its entry.
- ``openclipart``, ``wordnet``, ``tuxpaint-animals``: the Debian binary package itself (a ``.deb`` from
  the Debian archive, SHA-256 from Debian's signed ``Packages`` index, as ``apt-cache show`` prints it),
  of which only the data folder is extracted, with the same safety checks as any archive. This gives the
  same files as the installed package without root. Upstream archives are not used: openclipart's 0.18
  archive is repacked by Debian (``+dfsg``), so its checksum could not be established; Princeton's
  WordNet 3.0 tarball ships no prebuilt ``index.*`` files in the form Debian installs, and its
  ``wn3.1.dict`` tarball is another WordNet version (other candidate words for NegLabel); for Tux Paint's
  own stamps tarball no checksum could be established here, while Debian's index pins its package.

The Tux Paint animal stamps replace Animal-MNIST as a semantic-OOD set: Animal-MNIST's only published form
is the pickle files inside the PyPI package ``animal-mnist``, and nothing downloaded is ever unpickled.
scikit-learn's digits ship with scikit-learn.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from deltaenergy import download as dl

SYSTEM_DATA_ENV = "DELTAENERGY_SYSTEM_DATA"
"""Environment variable overriding the root of Debian-installed data (default ``/usr/share``)."""

FETCHED_DATA_ENV = "DELTAENERGY_FETCHED_DATA"
"""Environment variable naming the folder of downloaded sources (default ``resources/downloads``)."""

SOURCES_OVERRIDE_ENV = "DELTAENERGY_SOURCES_OVERRIDE"
"""Tests only: a JSON file ``{key: [{"name", "urls", "digest"}, ...]}`` replacing a source's files."""

DEBIAN_ARCHIVE = "https://deb.debian.org/debian/"
_FMNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its name in the download folder, mirrors in order, and digest."""

    name: str
    urls: tuple[str, ...]
    digest: str


@dataclass(frozen=True)
class DataSource:
    """A data folder: ``relative`` under the system data root when ``package`` is installed; else
    ``files`` downloaded, and ``member`` (a folder inside the single archive) extracted, or the files
    used as they are when ``member`` is None."""

    key: str
    relative: str
    package: str
    files: tuple[RemoteFile, ...]
    member: str | None = None
    extra: dict = field(default_factory=dict)


def _deb(filename: str, sha256: str) -> tuple[RemoteFile, ...]:
    return (RemoteFile(Path(filename).name, (DEBIAN_ARCHIVE + filename,), f"sha256:{sha256}"),)


SOURCES: dict[str, DataSource] = {
    s.key: s
    for s in (
        DataSource(
            "fashion-mnist", "datasets/fashion-mnist", "dataset-fashion-mnist",
            tuple(RemoteFile(name, tuple(m + name for m in _FMNIST_MIRRORS), f"sha256:{sha}") for name, sha in (
                # authors' MD5 8d4fb7e6c68d591d4c3dfef9ec88bf0d, 25c81989df183df01b3e8a0aad5dffbe,
                # bef4ecab320f06d8554ea6380940ec79, bb300cfdad3c16e7a12a480ee83cd310 (same order)
                ("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
                ("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
                ("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
                ("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
            )),
        ),
        DataSource(
            "openclipart", "openclipart/png", "openclipart-png",
            _deb("pool/main/o/openclipart/openclipart-png_0.18+dfsg-19_all.deb",
                 "f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02"),
            member="usr/share/openclipart/png",
        ),
        # GIMP's own source tarball. Its SHA-256 is the one in Debian's signed gimp_2.10.34-1+deb12u10.dsc
        # for gimp_2.10.34.orig.tar.bz2, and independent packagers (Termux, Arch) pin the same digest for
        # this URL, so Debian's orig is GIMP's file; its data/patterns/*.pat equal gimp-data's (checked).
        DataSource(
            "gimp-patterns", "gimp/2.0/patterns", "gimp-data",
            (RemoteFile(
                "gimp-2.10.34.tar.bz2",
                tuple(f"https://download.gimp.org/{d}/v2.10/gimp-2.10.34.tar.bz2" for d in ("pub/gimp", "mirror/pub/gimp")),
                "sha256:84004642d351b398a4293cd7fd3592044a944f05bb52850ee6068f247c657aa3",
            ),),
            member="gimp-2.10.34/data/patterns",
        ),
        DataSource(
            "wordnet", "wordnet", "wordnet-base",
            _deb("pool/main/w/wordnet/wordnet-base_3.0-37_all.deb",
                 "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752"),
            member="usr/share/wordnet",
        ),
        # Tux Paint's stamps (a 153 MiB file), of which only the animals folder is extracted.
        DataSource(
            "tuxpaint-animals", "tuxpaint/stamps/animals", "tuxpaint-stamps-default",
            _deb("pool/main/t/tuxpaint-stamps/tuxpaint-stamps-default_2022.06.04-1_all.deb",
                 "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34"),
            member="usr/share/tuxpaint/stamps/animals",
        ),
    )
}  # fmt: skip

DATASET_SOURCES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("fashion-mnist",),
    "fmnist_resampled": ("fashion-mnist",),
    "fmnist_sketch": ("fashion-mnist",),
    "fmnist_corrupt": ("fashion-mnist",),
    "fmnist_rendition": ("fashion-mnist",),
    "stamps_animals": ("tuxpaint-animals",),
    "digits": (),
    "clipart": ("openclipart",),
    "textures": ("gimp-patterns",),
}
"""Data sources each demo dataset reads (digits come from the PyPI package scikit-learn)."""


def system_data_root() -> Path:
    """Root of Debian-installed data: ``$DELTAENERGY_SYSTEM_DATA`` or ``/usr/share``."""
    return Path(os.environ.get(SYSTEM_DATA_ENV, "/usr/share"))


def fetched_data_root() -> Path:
    """Folder of downloaded sources: ``$DELTAENERGY_FETCHED_DATA`` or ``resources/downloads``."""
    return Path(os.environ.get(FETCHED_DATA_ENV, "resources/downloads"))


def override_files(key: str) -> tuple[tuple[RemoteFile, ...], str] | None:
    """(files, table path) replacing ``key``'s files in the ``$DELTAENERGY_SOURCES_OVERRIDE`` table (tests),
    or None when no table is set or it has no entry ``key``."""
    override = os.environ.get(SOURCES_OVERRIDE_ENV)
    if not override:
        return None
    table = json.loads(Path(override).read_text())
    if key not in table:
        return None
    return tuple(RemoteFile(f["name"], tuple(f["urls"]), f["digest"]) for f in table[key]), override


def source(key: str) -> DataSource:
    """Registry entry ``key``, with its files replaced by ``$DELTAENERGY_SOURCES_OVERRIDE`` (tests)."""
    if key not in SOURCES:
        raise ValueError(f"unknown data source '{key}'; known: {sorted(SOURCES)}")
    entry = SOURCES[key]
    replaced = override_files(key)
    if replaced:
        files, override = replaced
        entry = DataSource(entry.key, entry.relative, entry.package, files, entry.member, {"override": override})
    return entry


def system_available(key: str) -> bool:
    """Whether the registry package's folder of source ``key`` exists."""
    return (system_data_root() / SOURCES[key].relative).exists()


def resolve(key: str) -> tuple[Path, dict]:
    """(folder, provenance record) of source ``key``: the installed package's, else the download's."""
    entry = SOURCES[key]
    system = system_data_root() / entry.relative
    if system.exists():
        return system, {"source": key, "kind": "registry", "package": f"Debian {entry.package}", "path": str(system)}
    fetched = fetched_data_root() / key
    if dl.is_complete(fetched):
        return fetched, json.loads(dl.complete_marker(fetched).read_text())
    raise FileNotFoundError(
        f"{system} not found and no completed download at {fetched}: the demo reads '{key}' from the Debian "
        f"package '{entry.package}' or from its verified download. Fix: run the workflow (its rule "
        f"fetch_source downloads it), or run `python -m deltaenergy.data.sources {key}`, or sudo apt-get "
        f"install {entry.package} (or set {SYSTEM_DATA_ENV} to the folder that holds {entry.relative})"
    )


def fetch_source(key: str, root: str | os.PathLike | None = None, **download_options) -> dict:
    """Download source ``key`` into ``root/<key>/`` (default :func:`fetched_data_root`), verified and
    extracted safely; the marker ``root/<key>.complete`` (the returned JSON record) is written last.

    ``download_options`` go to :func:`deltaenergy.download.download` (retries, backoff, timeout, progress).
    Archives are kept in ``root/archives/`` so a rerun verifies instead of downloading again.
    """
    entry = source(key)
    root = Path(fetched_data_root() if root is None else root)
    target = root / key
    dl.complete_marker(target).unlink(missing_ok=True)
    fetched = []
    for remote in entry.files:
        path = root / "archives" / remote.name
        url = dl.download(remote.urls, path, remote.digest, what=f"data source '{key}' ({remote.name})",
                          **download_options)
        fetched.append({"name": remote.name, "digest": remote.digest, "url": url or "existing verified file",
                        "mirrors": list(remote.urls)})
    if entry.member is None:
        staging = root / f".{key}.staging"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        for remote in entry.files:
            shutil.copyfile(root / "archives" / remote.name, staging / remote.name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    else:
        (archive,) = entry.files
        dl.extract_archive(root / "archives" / archive.name, target, subdir=entry.member, mark=False)
    record = {"source": key, "kind": "download", "package_equivalent": f"Debian {entry.package}",
              "path": str(target), "files": fetched, **entry.extra}
    dl.mark_complete(target, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


if __name__ == "__main__":  # python -m deltaenergy.data.sources KEY [KEY ...]
    import sys

    for name in sys.argv[1:] or sorted(SOURCES):
        print(json.dumps(fetch_source(name), indent=2))
