"""The demo's data without the Debian packages: the Debian data folder is hidden (an empty system data
root), miniatures of the canonical archives are served on 127.0.0.1 with a checksum table, and the
workflow's data rules fetch, verify and extract them; a wrong checksum stops with a clear message."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from deltaenergy.data import demo, sources
from deltaenergy.download import is_complete
from fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"fashion_mnist": {"train_per_class": 2, "val_per_class": 1, "test_per_class": 2},
         "covariate": {"n_per_class": 2}, "ood": {"n": 6}}
DATASETS = ["fashion_mnist", "fmnist_sketch", "clipart", "textures", "stamps_animals"]
NOT_DATA = {".snakemake_timestamp", "Makefile.am"}
"""Files beside the data in an extracted folder: Snakemake's stamp of a directory output, GIMP's build file."""


def _idx(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def _png(rgba, size=(12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, rgba).save(buf, format="PNG")
    return buf.getvalue()


def _gimp_pattern(name: str, pixels: np.ndarray) -> bytes:
    height, width, bpp = pixels.shape
    label = name.encode() + b"\0"
    header = struct.pack(">5I", 24 + len(label), 1, width, height, bpp) + b"GPAT" + label
    return header + pixels.tobytes()


def _deb(files: dict[str, bytes]) -> bytes:
    """A Debian package (ar: debian-binary, control.tar.xz, data.tar.xz) holding ``files``."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", data.getvalue())):
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode())
        out.write(body + (b"\n" if len(body) % 2 else b""))
    return out.getvalue()


def installed_layout() -> dict[str, dict[str, bytes]]:
    """Per source key: miniature files as the Debian package installs them (path under /usr/share)."""
    rng = np.random.default_rng(0)
    fmnist = {}
    for kind in ("train", "t10k"):
        labels = np.repeat(np.arange(10, dtype=np.uint8), 8)
        fmnist[f"datasets/fashion-mnist/{kind}-images-idx3-ubyte.gz"] = _idx(
            rng.integers(0, 256, (80, 28, 28), dtype=np.uint8))
        fmnist[f"datasets/fashion-mnist/{kind}-labels-idx1-ubyte.gz"] = _idx(labels)
    clipart = {f"openclipart/png/{c}/item{i}.png": _png((40 * i, 200 - 20 * i, 90, 255))
               for c in demo.CLIPART_CATEGORIES for i in range(2)}
    patterns = {f"gimp/2.0/patterns/Mini/p{i}.pat":
                _gimp_pattern(f"p{i}", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for i in range(3)}
    wordnet = {"wordnet/index.noun": b"  1 licence line\ndog n 1\ncat n 1\n", "wordnet/index.adj": b"red a 1\n"}
    # Tux Paint's layout: PNG stamps in nested folders, each with its .txt description (and .dat options,
    # .ogg sounds); a few stamps are .svg only. Fewer PNGs than SIZES' n = 6: all of them are used.
    animals = "tuxpaint/stamps/animals"
    stamps = {f"{animals}/{name}.png": _png((30 * i, 100, 200 - 30 * i, 255 if i % 2 else 128), (20 + 6 * i, 16))
              for i, name in enumerate(["birds/owl", "birds/cartoon/tux", "mammals/bears/bear", "fish/clownfish"])}
    stamps |= {f"{animals}/birds/owl.txt": b"An owl.\n", f"{animals}/birds/owl.dat": b"noflip\n",
               f"{animals}/birds/owl.ogg": b"OggS", f"{animals}/birds/swallow.svg": b"<svg/>"}
    return {"fashion-mnist": fmnist, "openclipart": clipart, "gimp-patterns": patterns, "wordnet": wordnet,
            "tuxpaint-animals": stamps}


def _tar_bz2(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:bz2") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def miniatures(layout: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """Per source key: file name -> bytes, shaped like the canonical downloads (IDX .gz files, GIMP's
    source tarball, Debian packages), each holding its miniature where the real archive has the data."""
    debs = {"openclipart": "openclipart-png_mini_all.deb", "wordnet": "wordnet-base_mini_all.deb",
            "tuxpaint-animals": "tuxpaint-stamps-default_mini_all.deb"}
    beside = {"tuxpaint-animals": {"usr/share/tuxpaint/stamps/vehicles/car.png": _png((0, 0, 0, 255)),
                                   "usr/share/doc/tuxpaint-stamps-default/copyright": b"License: GPL-2\n"}}
    out = {"fashion-mnist": {Path(p).name: data for p, data in layout["fashion-mnist"].items()}}
    for key, name in debs.items():
        out[key] = {name: _deb({**{f"usr/share/{p}": data for p, data in layout[key].items()}, **beside.get(key, {})})}
    member = sources.SOURCES["gimp-patterns"].member
    gimp = {f"{member}/{p.removeprefix('gimp/2.0/patterns/')}": data for p, data in layout["gimp-patterns"].items()}
    out["gimp-patterns"] = {"gimp-mini.tar.bz2": _tar_bz2({**gimp, f"{member}/Makefile.am": b"# build file\n"})}
    return out


@pytest.fixture(scope="module")
def served():
    """The miniatures on a local server, and a checksum table pointing at it (first mirror: a 404)."""
    minis = miniatures(installed_layout())
    with FaultServer() as server:
        table = {}
        for key, files in minis.items():
            table[key] = []
            for name, data in files.items():
                server.files[f"/{key}/{name}"] = data
                table[key].append({"name": name, "urls": [server.url(f"/gone/{name}"), server.url(f"/{key}/{name}")],
                                   "digest": "sha256:" + hashlib.sha256(data).hexdigest()})
        yield minis, table


def _run(tmp: Path, table: dict, targets: list[str]) -> subprocess.CompletedProcess:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["benchmark"] = "dl"
    cfg["data"]["sizes"] = SIZES
    cfg["fewshot"]["shots"] = [1]
    cfg["fewshot"]["method_shots"] = {}  # every method at the one shot count
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp / "table.json").write_text(json.dumps(table))
    (tmp / "empty_system").mkdir()
    env = {**os.environ, sources.SYSTEM_DATA_ENV: str(tmp / "empty_system"),
           sources.SOURCES_OVERRIDE_ENV: str(tmp / "table.json")}
    env.pop(sources.FETCHED_DATA_ENV, None)
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile",
                           str(tmp / "config.yaml"), "--cores", "2", *targets],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def fetched_run(served, tmp_path_factory):
    minis, table = served
    tmp = tmp_path_factory.mktemp("fetch")
    targets = [f"results/dl/manifests/{d}.csv" for d in DATASETS] + ["resources/downloads/wordnet.complete"]
    proc = _run(tmp, table, targets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp, minis, table


@pytest.mark.workflow
def test_data_rules_fetch_verify_and_extract_without_the_debian_packages(fetched_run):
    tmp, minis, table = fetched_run
    downloads = tmp / "resources" / "downloads"
    for key, files in minis.items():
        assert is_complete(downloads / key), key
        record = json.loads((downloads / f"{key}.complete").read_text())
        assert record["kind"] == "download"
        assert [f["url"] for f in record["files"]] == [e["urls"][1] for e in table[key]]  # after the 404
        assert [f["digest"] for f in record["files"]] == [e["digest"] for e in table[key]]
    for name, data in minis["fashion-mnist"].items():
        assert (downloads / "fashion-mnist" / name).read_bytes() == data
    layout = installed_layout()
    for key in ("openclipart", "gimp-patterns", "wordnet", "tuxpaint-animals"):
        relative = sources.SOURCES[key].relative
        extracted = {f"{relative}/{p.relative_to(downloads / key)}": p.read_bytes()
                     for p in (downloads / key).rglob("*") if p.is_file() and p.name not in NOT_DATA}
        assert extracted == layout[key], key  # only the package's data folder (no vehicles, no doc)


@pytest.mark.workflow
def test_provenance_of_each_dataset_names_the_download(fetched_run):
    tmp, _, _ = fetched_run
    expected = {"fashion_mnist": ["fashion-mnist"], "fmnist_sketch": ["fashion-mnist"], "clipart": ["openclipart"],
                "textures": ["gimp-patterns", "scikit-image"], "stamps_animals": ["tuxpaint-animals"]}
    for dataset, keys in expected.items():
        records = json.loads((tmp / "results/dl/data" / dataset / "sources.json").read_text())
        assert [r["source"] for r in records] == keys
        assert records[0]["kind"] == "download" and records[0]["files"][0]["url"].startswith("http://127.0.0.1:")


@pytest.mark.workflow
def test_a_set_with_fewer_images_than_n_is_used_whole_and_its_sidecar_says_so(fetched_run):
    tmp, _, _ = fetched_run
    sidecar = json.loads((tmp / "results/dl/manifests/stamps_animals.csv.json").read_text())
    assert sidecar["images"] == 4 and sidecar["sizes"] == SIZES["ood"] == {"n": 6}
    assert json.loads((tmp / "results/dl/manifests/clipart.csv.json").read_text())["images"] == 6
    assert len(list((tmp / "results/dl/data/stamps_animals/test").glob("*.png"))) == 4


@pytest.mark.workflow
def test_downloaded_and_installed_sources_give_identical_datasets(fetched_run, tmp_path, monkeypatch):
    """The same miniature files laid out as the Debian packages install them build the same images."""
    tmp, _, _ = fetched_run
    system = tmp_path / "system"
    for files in installed_layout().values():
        for relative, data in files.items():
            (system / relative).parent.mkdir(parents=True, exist_ok=True)
            (system / relative).write_bytes(data)
    monkeypatch.setenv(sources.SYSTEM_DATA_ENV, str(system))
    monkeypatch.setenv(sources.FETCHED_DATA_ENV, str(tmp_path / "no_downloads"))
    for dataset in DATASETS:
        sizes = SIZES["fashion_mnist"] if dataset == "fashion_mnist" else SIZES["covariate" if "fmnist" in dataset
                                                                               else "ood"]
        manifest = demo.build_demo_dataset(dataset, tmp_path / "out", sizes, seed=0)
        assert manifest.attrs["sources"][0]["kind"] == "registry"
        fetched = sorted((tmp / "results/dl/data" / dataset).rglob("*.png"))
        built = sorted((tmp_path / "out" / dataset).rglob("*.png"))
        assert len(built) == len(fetched) > 0
        for a, b in zip(built, fetched):
            np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


@pytest.mark.workflow
@pytest.mark.parametrize("key, dataset", [("gimp-patterns", "textures"), ("tuxpaint-animals", "stamps_animals")])
def test_wrong_checksum_stops_the_rule_with_a_clear_message(served, tmp_path, key, dataset):
    _, table = served
    bad = json.loads(json.dumps(table))
    bad[key][0]["digest"] = "sha256:" + "ab" * 32
    proc = _run(tmp_path, bad, [f"results/dl/manifests/{dataset}.csv"])
    assert proc.returncode != 0
    log = (tmp_path / f"resources/downloads/logs/{key}.log").read_text()
    good = table[key][0]["digest"].split(":")[1]
    for needle in (f"data source '{key}'", "checksum mismatch", table[key][0]["urls"][1],
                   "expected sha256 " + "ab" * 32, f"found {good}", "Fix: delete"):
        assert needle in log, needle
    assert key in proc.stdout + proc.stderr
    downloads = tmp_path / "resources/downloads"
    assert not (downloads / f"{key}.complete").exists() and not (downloads / key).exists()
    assert not (downloads / "archives" / table[key][0]["name"]).exists()
    assert not (tmp_path / f"results/dl/manifests/{dataset}.csv").exists()


def test_resolve_prefers_the_installed_package_and_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.SYSTEM_DATA_ENV, str(tmp_path / "system"))
    monkeypatch.setenv(sources.FETCHED_DATA_ENV, str(tmp_path / "downloads"))
    with pytest.raises(FileNotFoundError, match="sudo apt-get install wordnet-base") as err:
        sources.resolve("wordnet")
    assert "fetch_source" in str(err.value)
    (tmp_path / "downloads/wordnet").mkdir(parents=True)
    assert not sources.system_available("wordnet")
    with pytest.raises(FileNotFoundError):  # a download without its completion marker does not count
        sources.resolve("wordnet")
    (tmp_path / "downloads/wordnet.complete").write_text(json.dumps({"kind": "download"}))
    assert sources.resolve("wordnet") == (tmp_path / "downloads/wordnet", {"kind": "download"})
    (tmp_path / "system/wordnet").mkdir(parents=True)
    folder, record = sources.resolve("wordnet")
    assert folder == tmp_path / "system/wordnet" and record["kind"] == "registry"
    assert record["package"] == "Debian wordnet-base"


@pytest.mark.workflow
def test_provenance_json_carries_each_datasets_sources(fetched_run):
    from deltaenergy.provenance import collect_provenance

    tmp, _, _ = fetched_run
    data = tmp / "results/dl/data"
    config = yaml.safe_load((tmp / "config.yaml").read_text())
    prov = collect_provenance(config, [], [], [str(data / d) for d in DATASETS])
    assert set(prov["data_sources"]) == set(DATASETS)
    assert prov["data_sources"]["clipart"] == json.loads((data / "clipart" / "sources.json").read_text())


def test_source_table_is_complete_and_well_formed():
    assert set(sources.DATASET_SOURCES) == set(demo.DEMO_DATASETS)
    assert {k for keys in sources.DATASET_SOURCES.values() for k in keys} | {"wordnet"} == set(sources.SOURCES)
    for key, entry in sources.SOURCES.items():
        assert entry.files and (entry.member is None) == (len(entry.files) == 4), key  # IDX files or one archive
        for remote in entry.files:
            algorithm, _, hexdigest = remote.digest.partition(":")
            assert algorithm == "sha256" and len(hexdigest) == 64 and int(hexdigest, 16) >= 0, remote
            assert remote.urls and all(u.startswith(("https://", "http://")) and u.endswith(remote.name)
                                       for u in remote.urls), remote
