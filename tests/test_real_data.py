"""The real benchmarks' data layer without the real data: miniatures of every real dataset in its real format
(tests/miniatures.py) are served on 127.0.0.1 and fetched, verified, extracted, validated and turned into
manifests through the registry; the protocols' class lists and splits are checked against references; each
kind of bad input stops with a message naming the dataset, expected vs found, and the fix, and leaves
nothing marked complete."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

import miniatures
from deltaenergy import download as dl
from deltaenergy.data import protocols, real, registry
from deltaenergy.data.manifest import OOD_LABEL
from deltaenergy.data.sources import FETCHED_DATA_ENV, SOURCES_OVERRIDE_ENV

FIRST_USE = ("inaturalist", "imagenet_a")  # fetched by trust on first use (digest None in the override)
OPTIONS = {"retries": 1, "backoff": 0.01, "timeout": 10, "progress": False}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return miniatures.build(tmp_path_factory.mktemp("miniatures"))


@pytest.fixture(scope="module")
def fetched(mini, tmp_path_factory):
    """Every downloadable miniature fetched through the registry into one downloads root (module scope)."""
    root = tmp_path_factory.mktemp("downloads")
    with miniatures.serve(mini) as server, pytest.MonkeyPatch.context() as mp:
        override = miniatures.write_override(root.parent / "override.json", mini, server, FIRST_USE)
        mp.setenv(SOURCES_OVERRIDE_ENV, str(override))
        records = {name: real.fetch_dataset(name, root, counts=mini.counts[name], **OPTIONS) for name in mini.archives}
        requests = list(server.requests)
    return root, records, requests


def _env(monkeypatch, root: Path, override: Path | None = None) -> None:
    monkeypatch.setenv(FETCHED_DATA_ENV, str(root))
    if override is not None:
        monkeypatch.setenv(SOURCES_OVERRIDE_ENV, str(override))


# --------------------------------------------------------------------------- registry and protocols


def test_registry_covers_every_benchmark_dataset_with_sources_and_counts():
    expected = {"imagenet1k", "inaturalist", "sun", "places", "textures", "imagenet_v2", "imagenet_sketch",
                "imagenet_a", "imagenet_r", "caltech101", "food101", "pacs", "vlcs", "ssb_hard", "ninco",
                "openimage_o"}
    assert set(registry.REAL_DATASETS) == expected
    for name, entry in registry.REAL_DATASETS.items():
        assert set(entry.counts) == set(registry.LAYOUTS[entry.layout]), name
        assert all(isinstance(v, int) and v > 0 for v in entry.counts.values()), name
        assert entry.licence and entry.homepage.startswith("https://"), name
        assert entry.manual == (not entry.files), name
        for remote in entry.files:
            assert remote.urls and all(u.startswith(("http://", "https://")) for u in remote.urls), name
            if remote.digest is not None:
                algorithm, _, hexdigest = remote.digest.partition(":")
                assert len(hexdigest) == {"sha256": 64, "md5": 32}[algorithm], name
    # The paper's numbers (benchmarks.md): 10k MOS subsets, DTD 5,640, V2 10k, Sketch 50,889, A 7,500, R 30,000.
    counts = {n: e.counts for n, e in registry.REAL_DATASETS.items()}
    assert [counts[n]["images"] for n in ("inaturalist", "sun", "places")] == [10_000] * 3
    assert counts["textures"] == {"classes": 47, "images": 5_640}
    assert counts["imagenet_a"] == {"classes": 200, "images": 7_500}
    assert counts["imagenet_r"] == {"classes": 200, "images": 30_000}
    assert counts["imagenet_sketch"]["images"] == 50_889 and counts["imagenet_v2"]["images"] == 10_000
    with pytest.raises(ValueError, match=r"data.counts.pacs: unknown key\(s\) \['train'\]"):
        registry.expected_counts("pacs", {"train": 3})


def test_imagenet_class_lists_match_timm_and_open_clip():
    wnids, names = protocols.imagenet_classes()
    assert len(wnids) == len(set(wnids)) == len(names) == 1000 and wnids == sorted(wnids)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert names == list(IMAGENET_CLASSNAMES) and names[0] == "tench" and wnids[0] == "n01440764"
    info = Path(pytest.importorskip("timm").__file__).parent / "data" / "_info"
    assert wnids == (info / "imagenet_synsets.txt").read_text().split()
    for name in ("imagenet_a", "imagenet_r"):
        subset = protocols.imagenet_a_r_wnids(name)
        assert subset == (info / f"{name}_synsets.txt").read_text().split()
        assert len(set(subset)) == 200 and set(subset) <= set(wnids)
        # timm's index file: the 200 classes' positions in the 1000-class order
        assert [wnids.index(w) for w in subset] == [int(i) for i in (info / f"{name}_indices.txt").read_text().split()]
    ten, twenty = protocols.imagenet10_20()
    assert len(set(ten)) == 10 and len(set(twenty)) == 20 and not set(ten) & set(twenty)
    assert set(ten) | set(twenty) <= set(wnids)
    assert names[wnids.index("n04552348")] == "military aircraft"  # MCM's 'warplane'


def test_hard_split_is_seeded():
    a_id, a_ood = protocols.hard_split(1)
    assert (a_id, a_ood) == protocols.hard_split(1)
    b_id, _ = protocols.hard_split(2)
    assert a_id != b_id
    assert len(a_id) == 400 and len(a_ood) == 600 and sorted(a_id + a_ood) == list(range(1000))
    cfg = {"protocol": {"name": "hard_split", "seed": 1}}
    wnids = protocols.imagenet_wnids()
    assert real.id_class_ids(cfg) == [wnids[i] for i in a_id]
    open_spec = real.dataset_spec("imagenet1k_open", {**cfg, "id": "imagenet1k", "ood": ["imagenet1k_open"]})
    assert open_spec.role == "ood" and set(open_spec.folders) == {wnids[i] for i in a_ood}


def test_cross_dataset_removes_overlapping_ood_classes():
    pacs = protocols.cross_dataset("pacs", "photo")
    assert pacs["train_domains"] == ["art_painting", "cartoon", "sketch"] and len(pacs["classes"]) == 7
    folders = list(miniatures.CALTECH) + ["wheelchair", "snoopy", "emu"]
    kept_pacs = protocols.ood_classes("caltech101", folders, pacs["classes"])
    assert set(folders) - set(kept_pacs) == {"BACKGROUND_Google", "Faces", "Faces_easy", "dalmatian", "elephant",
                                             "snoopy"}
    vlcs = protocols.cross_dataset("vlcs", "VOC2007")["classes"]
    kept_vlcs = protocols.ood_classes("caltech101", folders, vlcs)
    assert set(folders) - set(kept_vlcs) == {"BACKGROUND_Google", "Faces", "Faces_easy", "chair", "dalmatian",
                                             "emu", "wheelchair", "snoopy"}
    assert protocols.ood_classes("food101", list(miniatures.FOOD), vlcs) == list(miniatures.FOOD)
    with pytest.raises(ValueError, match="held-out domain 'painting'"):
        protocols.cross_dataset("pacs", "painting")


# --------------------------------------------------------------------------- fetch and manifests


def test_every_miniature_is_fetched_verified_and_validated(mini, fetched):
    root, records, _ = fetched
    assert set(records) == set(registry.REAL_DATASETS) - {"imagenet1k"}
    for name, record in records.items():
        target = real.dataset_target(name, root)
        assert dl.is_complete(target), name
        assert json.loads(dl.complete_marker(target).read_text()) == record
        assert record["counts"] == mini.counts[name], name
        assert record["file"]["sha256"] == mini.sha256(name)
    # Trust on first use: recorded in the lock, exactly for the datasets without a digest.
    lock = real.read_lock(root)
    assert set(lock) == {f"{n}/{registry.REAL_DATASETS[n].files[0].name}" for n in FIRST_USE}
    assert all(lock[k]["digest"] == mini.sha256(k.split("/")[0]) for k in lock)
    assert records["inaturalist"]["file"]["verified_with"] == "first use (recorded)"
    assert records["textures"]["file"]["verified_with"] == mini.sha256("textures")


def test_first_use_record_verifies_later_downloads(mini, fetched, tmp_path, monkeypatch, capsys):
    root, _, _ = fetched
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shutil.copyfile(root / real.LOCK_NAME, downloads / real.LOCK_NAME)
    with miniatures.serve(mini) as server:
        server.files[miniatures.url_path(registry.REAL_DATASETS["imagenet_a"].files[0].urls[0])] = b"x" * 999
        _env(monkeypatch, downloads, miniatures.write_override(tmp_path / "o.json", mini, server, FIRST_USE))
        with pytest.raises(dl.ChecksumError, match=r"dataset 'imagenet_a' \(imagenet-a.tar\): checksum mismatch.*"
                                                   r"expected sha256 .* found .*Fix:"):
            real.fetch_dataset("imagenet_a", downloads, counts=mini.counts["imagenet_a"], **OPTIONS)
        assert not dl.is_complete(real.dataset_target("imagenet_a", downloads))
        # A first use says so loudly, compared with the MD5 third-party loaders pin for the real file.
        (downloads / real.LOCK_NAME).unlink()
        real.fetch_dataset("inaturalist", downloads, archive=mini.archives["inaturalist"],
                           counts=mini.counts["inaturalist"])
    err = capsys.readouterr().err
    assert (f"TRUST ON FIRST USE: inaturalist/iNaturalist.tar.gz has no published checksum; recorded "
            f"{mini.sha256('inaturalist')}") in err
    assert "DIFFERS FROM the MD5 5be6ea8aa027d7b631916427b32cb335" in err  # a miniature is not the real file
    assert real.read_lock(downloads)["inaturalist/iNaturalist.tar.gz"]["digest"] == mini.sha256("inaturalist")


def _config(mini, protocol, id_, covariate, ood, **extra):
    return {"protocol": protocol, "id": id_, "covariate": covariate, "ood": ood, "seed": 0,
            "sizes": {id_: {"train_per_class": 2, "val_per_class": 1}}, **mini.data_config(), **extra}


def test_manifests_of_the_imagenet_benchmark(mini, fetched, monkeypatch):
    root, _, _ = fetched
    _env(monkeypatch, root)
    cfg = _config(mini, {"name": "imagenet1k"}, "imagenet1k",
                  ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
                  ["inaturalist", "sun", "places", "textures", "ssb_hard", "ninco", "openimage_o"])
    wnids = protocols.imagenet_wnids()
    n = len(miniatures.MINI_WNIDS)
    manifest, extras = real.build_real_dataset("imagenet1k", cfg)
    assert manifest.groupby("split").size().to_dict() == {"train": 2 * n, "val": n, "test": 2 * n}
    assert sorted(set(manifest["label"])) == sorted(wnids.index(w) for w in miniatures.MINI_WNIDS)
    assert extras["class_subset"] == sorted(set(manifest["label"]))
    for path, label in zip(manifest["path"], manifest["label"]):
        assert Path(path).parent.name == wnids[label]
    train = set(manifest.loc[manifest["split"] == "train", "path"])
    assert not train & set(manifest.loc[manifest["split"] == "val", "path"])
    for name in ("imagenet_a", "imagenet_r"):
        manifest, extras = real.build_real_dataset(name, cfg)
        expected = sorted(wnids.index(w) for w in protocols.imagenet_a_r_wnids(name))
        assert extras["class_subset"] == expected and len(expected) == 200  # 200-way evaluation
        assert sorted(set(manifest["label"])) == expected and (manifest["role"] == "covariate").all()
    v2, extras = real.build_real_dataset("imagenet_v2", cfg)
    for path, label in zip(v2["path"], v2["label"]):
        assert Path(path).parent.name == str(label) and Path(path).name.startswith(wnids[label])
    for name in cfg["ood"]:
        manifest, extras = real.build_real_dataset(name, cfg)
        assert (manifest["label"] == OOD_LABEL).all() and extras["class_subset"] == []
        assert len(manifest) == mini.counts[name]["images"], name
    assert real.id_classes(cfg)[1][:2] == ["tench", "goldfish"]


def test_manifests_of_the_hard_split_and_imagenet10_20(mini, fetched, monkeypatch):
    root, _, _ = fetched
    _env(monkeypatch, root)
    wnids = protocols.imagenet_wnids()
    cfg = _config(mini, {"name": "hard_split", "seed": 3}, "imagenet1k", ["imagenet_a", "imagenet_sketch"],
                  ["imagenet1k_open"])
    ids = real.id_class_ids(cfg)
    chosen = set(protocols.hard_split(3)[0])
    idm, _ = real.build_real_dataset("imagenet1k", cfg)
    assert {ids[label] for label in idm["label"]} == {w for w in miniatures.MINI_WNIDS if wnids.index(w) in chosen}
    open_set, _ = real.build_real_dataset("imagenet1k_open", cfg)
    open_wnids = {Path(p).parent.name for p in open_set["path"]}
    assert open_wnids == {w for w in miniatures.MINI_WNIDS if wnids.index(w) not in chosen}
    assert (open_set["split"] == "test").all() and all("/val/" in p for p in open_set["path"])
    a_set, extras = real.build_real_dataset("imagenet_a", cfg)
    in_a = [w for w in protocols.imagenet_a_r_wnids("imagenet_a") if wnids.index(w) in chosen]
    assert extras["class_subset"] == sorted(ids.index(w) for w in in_a) and len(a_set) == len(in_a)
    cfg = _config(mini, {"name": "imagenet10_20"}, "imagenet10", [], ["imagenet20"])
    ten, _ = real.build_real_dataset("imagenet10", cfg)
    twenty, _ = real.build_real_dataset("imagenet20", cfg)
    assert sorted(set(ten["label"])) == list(range(10)) and len(ten) == 10 * 5
    assert {Path(p).parent.name for p in twenty["path"]} == set(protocols.IMAGENET20) and len(twenty) == 40
    assert real.id_classes(cfg)[0] == list(protocols.IMAGENET10)


@pytest.mark.parametrize("id_", ["pacs", "vlcs"])
def test_manifests_of_the_cross_dataset_benchmark(mini, fetched, monkeypatch, id_):
    root, _, _ = fetched
    _env(monkeypatch, root)
    domains, classes = protocols.DOMAINS[id_]
    held = domains[2]
    cfg = _config(mini, {"name": "cross_dataset", "held_out": held}, id_, [f"{id_}_{held}"],
                  ["caltech101", "textures", "food101"])
    manifest, extras = real.build_real_dataset(id_, cfg)
    assert {Path(p).parts[-3] for p in manifest["path"]} == set(domains) - {held}
    # 4 images per (domain, class): 2 train, 1 val and the remaining 1 test, in each of the 3 ID domains
    assert manifest.groupby("split").size().to_dict() == {"train": 2 * 3 * len(classes), "val": 3 * len(classes),
                                                          "test": 3 * len(classes)}
    assert extras["class_subset"] == list(range(len(classes)))
    shifted, _ = real.build_real_dataset(f"{id_}_{held}", cfg)
    assert {Path(p).parts[-3] for p in shifted["path"]} == {held} and len(shifted) == 4 * len(classes)
    assert all(classes[label] == Path(p).parent.name for p, label in zip(shifted["path"], shifted["label"]))
    caltech, _ = real.build_real_dataset("caltech101", cfg)
    kept = {Path(p).parent.name for p in caltech["path"]}
    assert kept == set(protocols.ood_classes("caltech101", list(miniatures.CALTECH), list(classes)))
    assert real.id_classes(cfg) == (list(classes), list(classes))
    # Default labels (no class list): sorted class folders, the same in every domain.
    every = real.real_manifest(id_, real.dataset_target(id_, root), "id")
    assert len(every) == mini.counts[id_]["images"]
    assert all(sorted(classes)[label] == Path(p).parent.name for p, label in zip(every["path"], every["label"]))


@pytest.mark.parametrize("form", ["csv", "devkit"])
def test_flat_imagenet_val_gives_the_same_test_split(mini, tmp_path, form):
    flat = miniatures.flat_val_imagenet(mini, tmp_path / "flat", form)
    real.validate_layout("imagenet1k", flat, mini.counts["imagenet1k"], origin="roots")
    rows = real.real_manifest("imagenet1k", flat, "id", miniatures.MINI_WNIDS, None, "test")
    reference = real.real_manifest("imagenet1k", mini.imagenet, "id", miniatures.MINI_WNIDS, None, "test")
    assert [Path(p).name for p in rows["path"]] == [Path(p).name for p in reference["path"]]
    assert rows["label"].tolist() == reference["label"].tolist()


# --------------------------------------------------------------------------- bad input


def test_wrong_imagenet_path(mini, tmp_path):
    cfg = {"roots": {"imagenet1k": str(tmp_path / "no-imagenet")}}
    with pytest.raises(real.DatasetLayoutError, match=r"imagenet1k: dataset folder .*no-imagenet not found "
                                                      r"\(expected train/<wnid>.*Fix: point data.roots.imagenet1k"):
        real.dataset_folder("imagenet1k", cfg)
    with pytest.raises(FileNotFoundError, match=r"imagenet1k: no folder configured .*Fix: set data.roots.imagenet1k"):
        real.dataset_folder("imagenet1k", {})
    # A folder that exists but is not ImageNet (here: the train folder itself).
    cfg = {"roots": {"imagenet1k": str(mini.imagenet / "train")}, "counts": {"imagenet1k": mini.counts["imagenet1k"]}}
    with pytest.raises(real.DatasetLayoutError, match=r"imagenet1k: .*train/train is missing.*Fix:"):
        real.dataset_folder("imagenet1k", cfg)


def test_folder_with_missing_classes_is_refused_naming_them(mini, fetched, tmp_path, monkeypatch):
    root, _, _ = fetched
    copy = tmp_path / "imagenet-a"
    shutil.copytree(real.dataset_target("imagenet_a", root), copy)
    lost = protocols.imagenet_a_r_wnids("imagenet_a")[5]
    shutil.rmtree(copy / lost)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    with pytest.raises(real.DatasetLayoutError,
                       match=rf"imagenet_a: .* classes: expected 200, found 199; images: expected 200, found 199; "
                             rf"missing class folders: \['{lost}'\]. Fix: point data.roots.imagenet_a"):
        real.dataset_folder("imagenet_a", {"roots": {"imagenet_a": str(copy)}, "counts": mini.counts})
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # read-only: nothing written
    # The same check guards a download: an archive missing a class is never marked complete.
    mini_counts = dict(mini.counts["textures"], classes=4)
    downloads = tmp_path / "downloads"
    with miniatures.serve(mini) as server:
        monkeypatch.setenv(SOURCES_OVERRIDE_ENV, str(miniatures.write_override(tmp_path / "o.json", mini, server)))
    with pytest.raises(real.DatasetLayoutError, match=r"textures: .*classes: expected 4, found 3.*Fix: delete"):
        real.fetch_dataset("textures", downloads, archive=mini.archives["textures"], counts=mini_counts)
    assert not dl.complete_marker(real.dataset_target("textures", downloads)).exists()
    assert not (downloads / real.LOCK_NAME).exists()


def test_half_downloaded_archive_is_resumed(mini, tmp_path, monkeypatch):
    name = "food101"
    remote = registry.REAL_DATASETS[name].files[0]
    data = mini.archives[name].read_bytes()
    downloads = tmp_path / "downloads"
    part = downloads / "archives" / name / f"{remote.name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])
    with miniatures.serve(mini) as server:
        server.faults[miniatures.url_path(remote.urls[0])] = ["truncate"]  # and the first try breaks again
        _env(monkeypatch, downloads, miniatures.write_override(tmp_path / "o.json", mini, server))
        real.fetch_dataset(name, downloads, counts=mini.counts[name], **OPTIONS)
        ranges = [r for _, r in server.requests]
    assert ranges[0] == f"bytes={len(data) // 2}-" and ranges[1] is not None and ranges[1] != ranges[0]
    assert (downloads / "archives" / name / remote.name).read_bytes() == data
    assert dl.is_complete(real.dataset_target(name, downloads))


def test_checksum_mismatch_stops_and_marks_nothing(mini, tmp_path, monkeypatch):
    downloads = tmp_path / "downloads"
    with miniatures.serve(mini) as server:
        wrong = {"pacs": "sha256:" + "0" * 64}
        _env(monkeypatch, downloads, miniatures.write_override(tmp_path / "o.json", mini, server, digests=wrong))
        with pytest.raises(dl.ChecksumError, match=rf"dataset 'pacs' \(PACS.zip\): checksum mismatch .*expected "
                                                   rf"sha256 {'0' * 64}, found {mini.sha256('pacs')[7:]}.*Fix: "):
            real.fetch_dataset("pacs", downloads, counts=mini.counts["pacs"], **OPTIONS)
    assert not dl.is_complete(real.dataset_target("pacs", downloads))
    assert not (downloads / "archives" / "pacs" / "PACS.zip").exists()
    # A local archive (data.archives) is verified the same way.
    with pytest.raises(dl.ChecksumError, match="dataset 'pacs'"):
        real.fetch_dataset("pacs", downloads, archive=mini.archives["vlcs"], counts=mini.counts["pacs"])


def test_archive_escaping_the_target_is_refused(mini, tmp_path, monkeypatch):
    evil = tmp_path / "evil" / "imagenet-r.tar"
    evil.parent.mkdir()
    with tarfile.open(evil, "w") as tar:
        for member, data in (("imagenet-r/n01443537/0.jpg", b"x"), ("imagenet-r/../../escaped.jpg", b"y")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    downloads = tmp_path / "downloads"
    with miniatures.serve(mini) as server:
        server.files[miniatures.url_path(registry.REAL_DATASETS["imagenet_r"].files[0].urls[0])] = evil.read_bytes()
        _env(monkeypatch, downloads, miniatures.write_override(tmp_path / "o.json", mini, server, ("imagenet_r",)))
        with pytest.raises(dl.UnsafeArchiveError, match=r"dataset 'imagenet_r' \(imagenet-r.tar\): .*points outside "
                                                        r"the target.*not marked complete. Fix: download"):
            real.fetch_dataset("imagenet_r", downloads, **OPTIONS)
    assert not list(tmp_path.rglob("escaped.jpg"))
    assert not dl.complete_marker(real.dataset_target("imagenet_r", downloads)).exists()
    assert not (downloads / real.LOCK_NAME).exists()  # nothing trusted
    assert not (downloads / "archives" / "imagenet_r" / "imagenet-r.tar").exists()  # re-downloaded next time


def test_html_page_instead_of_archive_is_explained(mini, tmp_path, monkeypatch):
    downloads = tmp_path / "downloads"
    with miniatures.serve(mini) as server:
        url = registry.REAL_DATASETS["ssb_hard"].files[0].urls[0]
        server.files[miniatures.url_path(url)] = b"<!DOCTYPE html><html><body>Google Drive quota</body></html>"
        _env(monkeypatch, downloads, miniatures.write_override(tmp_path / "o.json", mini, server, ("ssb_hard",)))
        with pytest.raises(dl.UnsafeArchiveError, match=r"dataset 'ssb_hard' .*is an HTML page.*set "
                                                        r"data.archives.ssb_hard"):
            real.fetch_dataset("ssb_hard", downloads, **OPTIONS)
    assert not dl.is_complete(real.dataset_target("ssb_hard", downloads))


def test_dataset_folder_needs_a_completed_download(tmp_path, monkeypatch):
    _env(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sun: no completed download .*Fix: run the rule fetch_dataset"):
        real.dataset_folder("sun", {})
    with pytest.raises(ValueError, match=r"imagenet1k cannot be downloaded .*Fix: set data.roots.imagenet1k"):
        real.fetch_dataset("imagenet1k", tmp_path)
