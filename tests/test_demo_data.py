"""Demo dataset builders (real package data, small sizes); safe image loading is in test_reliability.py."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from deltaenergy.data import demo, sources
from deltaenergy.data.demo import DEMO_DATASETS, FASHION_MNIST_CLASSES, build_demo_dataset
from deltaenergy.data.images import load_image
from deltaenergy.data.manifest import MANIFEST_COLUMNS, validate_manifest, write_manifest_sidecar

SIZES = {"train_per_class": 3, "val_per_class": 2, "test_per_class": 2, "n_per_class": 2, "n": 6}
EXPECTED_ROLES = {
    "fashion_mnist": "id",
    "fmnist_resampled": "covariate",
    "fmnist_sketch": "covariate",
    "fmnist_corrupt": "covariate",
    "fmnist_rendition": "covariate",
    "stamps_animals": "ood",
    "digits": "ood",
    "clipart": "ood",
    "textures": "ood",
}


def _pixels(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in paths]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, pd.DataFrame]]:
    out = tmp_path_factory.mktemp("demo")
    return {name: (out, build_demo_dataset(name, out, SIZES, seed=0)) for name in DEMO_DATASETS}


def test_registry_lists_the_nine_datasets():
    assert {name: d.role for name, d in DEMO_DATASETS.items()} == EXPECTED_ROLES
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "ankle boot"


@pytest.mark.parametrize("name", list(EXPECTED_ROLES))
def test_builder_counts_labels_roles_and_files(built, name):
    out, manifest = built[name]
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    pd.testing.assert_frame_equal(validate_manifest(manifest), manifest)
    assert (manifest["role"] == EXPECTED_ROLES[name]).all() and (manifest["dataset"] == name).all()
    if name == "fashion_mnist":
        counts = manifest.groupby(["split", "label"]).size().unstack()
        assert counts.loc["train"].tolist() == [3] * 10
        assert counts.loc["val"].tolist() == [2] * 10
        assert counts.loc["test"].tolist() == [2] * 10
    elif EXPECTED_ROLES[name] == "covariate":
        assert (manifest["split"] == "test").all()
        assert np.bincount(manifest["label"], minlength=10).tolist() == [2] * 10
    else:
        assert len(manifest) == 6 and (manifest["label"] == -1).all() and (manifest["split"] == "test").all()
    for split, rows in manifest.groupby("split", sort=False):
        expected = [str(out / name / split / f"{i:05d}.png") for i in range(len(rows))]
        assert rows["path"].tolist() == expected
    for path in manifest["path"]:
        with Image.open(path) as im:
            assert im.mode in {"L", "RGB"} and max(im.size) <= 64
        assert load_image(path).mode == "RGB"
    assert not (out / f".{name}.tmp").exists()


@pytest.mark.parametrize("name", list(EXPECTED_ROLES))
def test_same_seed_same_files_other_seed_other_selection(built, tmp_path, name):
    first_out, first = built[name]
    again = build_demo_dataset(name, tmp_path, SIZES, seed=0)
    strip = lambda m, root: m.assign(path=m["path"].str.replace(str(root), "", regex=False))  # noqa: E731
    pd.testing.assert_frame_equal(strip(first, first_out), strip(again, tmp_path))
    for a, b in zip(_pixels(first["path"]), _pixels(again["path"])):
        np.testing.assert_array_equal(a, b)
    other = build_demo_dataset(name, tmp_path / "other", SIZES, seed=1)
    assert any(
        not np.array_equal(a, b) for a, b in zip(_pixels(first["path"]), _pixels(other["path"]))
    ), f"{name}: seed 1 gave the same images as seed 0"


def test_fashion_mnist_files_match_the_idx_source(built):
    out, manifest = built["fashion_mnist"]
    parts = DEMO_DATASETS["fashion_mnist"].builder(SIZES, 0)
    for part in parts:
        x, y = demo.load_fashion_mnist("train" if part.split in {"train", "val"} else "t10k")
        rows = manifest[manifest["split"] == part.split]
        np.testing.assert_array_equal(np.stack(_pixels(rows["path"])), x[part.source])
        np.testing.assert_array_equal(rows["label"].to_numpy(), y[part.source])


def test_fashion_mnist_splits_partition_the_idx_files():
    """At full pool sizes, ID train/val and resampled exactly partition IDX train; ditto t10k."""
    _, train_y = demo.load_fashion_mnist("train")
    _, test_y = demo.load_fashion_mnist("t10k")
    train, val, test = DEMO_DATASETS["fashion_mnist"].builder(
        {"train_per_class": 1000, "val_per_class": 2000, "test_per_class": 500}, 3
    )
    resampled = demo._build_resampled({"n_per_class": 3000}, 3)[0]
    sources = np.concatenate([train.source, val.source, resampled.source])
    assert np.array_equal(np.sort(sources), np.arange(len(train_y)))
    for name in ("fmnist_sketch", "fmnist_corrupt", "fmnist_rendition"):
        _, labels, held = demo._held_out_t10k(name, {"n_per_class": 500}, 3)
        assert np.array_equal(np.sort(np.concatenate([test.source, held])), np.arange(len(test_y)))
        np.testing.assert_array_equal(labels, test_y[held])
    with pytest.raises(ValueError, match="fashion_mnist train\\+val: needs 3001"):
        DEMO_DATASETS["fashion_mnist"].builder(
            {"train_per_class": 3000, "val_per_class": 1, "test_per_class": 1}, 3
        )


def test_covariate_sets_come_from_held_out_t10k_images():
    x, y = demo.load_fashion_mnist("t10k")
    sizes = {"n_per_class": 3}
    for name, builder in (("fmnist_sketch", demo._build_sketch), ("fmnist_rendition", demo._build_rendition)):
        (part,) = builder(sizes, 0)
        _, labels, index = demo._held_out_t10k(name, sizes, 0)
        np.testing.assert_array_equal(part.source, index)
        np.testing.assert_array_equal(part.labels, y[index])
    (rendition,) = demo._build_rendition(sizes, 0)
    assert rendition.images.shape == (30, 28, 28, 3)


def test_read_idx_parses_header_and_rejects_truncation(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\0\0\x08\x03" + struct.pack(">3I", 2, 3, 4) + array.tobytes()
    good, bad = tmp_path / "good.gz", tmp_path / "bad.gz"
    good.write_bytes(gzip.compress(raw))
    bad.write_bytes(gzip.compress(raw[:-1]))
    np.testing.assert_array_equal(demo.read_idx(good), array)
    with pytest.raises(ValueError, match="bad.gz is truncated"):
        demo.read_idx(bad)
    x, y = demo.load_fashion_mnist("train")
    assert x.shape == (60000, 28, 28) and np.bincount(y).tolist() == [6000] * 10


def test_gimp_pattern_parser(tmp_path):
    rng = np.random.default_rng(0)
    for bpp in (1, 2, 3, 4):
        pixels = rng.integers(0, 256, size=(3, 5, bpp), dtype=np.uint8)
        if bpp in (2, 4):
            pixels[..., -1] = 255
        name = b"test\0"
        header = struct.pack(">5I", 24 + len(name), 1, 5, 3, bpp) + b"GPAT" + name
        path = tmp_path / f"p{bpp}.pat"
        path.write_bytes(header + pixels.tobytes())
        colour = pixels[..., :3] if bpp >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
        np.testing.assert_array_equal(demo.read_gimp_pattern(path), colour)
    (tmp_path / "bad.pat").write_bytes(b"\0" * 40)
    with pytest.raises(ValueError, match="GPAT"):
        demo.read_gimp_pattern(tmp_path / "bad.pat")


def test_corruptions_match_numpy_references():
    x, _ = demo.load_fashion_mnist("t10k")
    images = x[:200]
    out, kinds = demo.corrupt(images, np.random.default_rng(0))
    names = list(demo.CORRUPTIONS)
    assert set(kinds.tolist()) == set(range(len(names)))
    ref_kinds = np.random.default_rng(0).integers(0, len(names), size=200)
    np.testing.assert_array_equal(kinds, ref_kinds)
    blur = kinds == names.index("gaussian_blur")
    # torch "reflect" padding is scipy's "mirror"; kernel 5 = sigma 1 truncated at 2 sigma
    ref_blur = np.stack([gaussian_filter(im / 1.0, 1.0, truncate=2.0, mode="mirror") for im in images[blur]])
    assert np.abs(out[blur].astype(float) - ref_blur).max() <= 1.0
    contrast = kinds == names.index("contrast")
    mean = images[contrast].mean(axis=(1, 2), keepdims=True)
    ref_contrast = 0.2 * images[contrast] + 0.8 * mean
    assert np.abs(out[contrast] - ref_contrast).max() <= 1.0
    for k in range(len(names)):
        assert not np.array_equal(out[kinds == k], images[kinds == k]), names[k]


def test_rendition_and_sketch_references():
    x, _ = demo.load_fashion_mnist("t10k")
    rendered, styles = demo.render(x[:60], np.random.default_rng(0))
    inverted = styles == 0
    np.testing.assert_array_equal(rendered[inverted], np.repeat(255 - x[:60][inverted, ..., None], 3, axis=3))
    square = np.zeros((1, 28, 28), np.uint8)
    square[0, 8:20, 8:20] = 255
    sk = demo.sketch(np.concatenate([np.zeros_like(square), square]))
    assert sk.shape == (2, 56, 56) and (sk[0] == 255).all()
    assert sk[1, 28, 28] == 255 and sk[1, 0, 0] == 255 and sk[1, 16, 28] < 128


def test_missing_system_data_names_the_apt_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(demo.SYSTEM_DATA_ENV, str(tmp_path))
    monkeypatch.setenv(sources.FETCHED_DATA_ENV, str(tmp_path / "no_downloads"))
    cases = {
        "fashion_mnist": "sudo apt-get install dataset-fashion-mnist",
        "fmnist_corrupt": "sudo apt-get install dataset-fashion-mnist",
        "clipart": "sudo apt-get install openclipart-png",
        "textures": "sudo apt-get install gimp-data",
        "stamps_animals": "sudo apt-get install tuxpaint-stamps-default",
    }
    for name, fix in cases.items():
        with pytest.raises(FileNotFoundError, match=fix) as info:
            build_demo_dataset(name, tmp_path / "out", SIZES, seed=0)
        assert str(tmp_path) in str(info.value)
    assert not (tmp_path / "out").exists()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_clipart_skips_unreadable_files_and_composites_on_white(tmp_path, monkeypatch):
    root = tmp_path / "openclipart/png"
    for category in demo.CLIPART_CATEGORIES:
        (root / category).mkdir(parents=True)
    (root / "animals/clear.png").write_bytes(_png_bytes(Image.new("RGBA", (10, 20), (255, 0, 0, 0))))
    (root / "food/red.png").write_bytes(_png_bytes(Image.new("RGB", (40, 40), (255, 0, 0))))
    (root / "tools/broken.png").write_bytes(_png_bytes(Image.new("RGB", (40, 40)))[:60])
    (root / "transportation/coat_check.png").write_bytes(_png_bytes(Image.new("RGB", (4, 4))))
    monkeypatch.setenv(demo.SYSTEM_DATA_ENV, str(tmp_path))
    assert [p.name for p in demo.clipart_paths()] == ["clear.png", "red.png", "broken.png"]
    # a seed whose order visits broken.png (sorted position 2) before the last readable file
    seed = next(s for s in range(100) if demo._rng(s, "clipart").permutation(3)[-1] != 2)
    manifest = build_demo_dataset("clipart", tmp_path / "out", {"n": 2}, seed=seed, on_bad_image="skip")
    assert [Path(s["path"]).name for s in manifest.attrs["skipped"]] == ["broken.png"] and len(manifest) == 2
    pixels = {tuple(np.asarray(Image.open(p))[32, 32]) for p in manifest["path"]}
    assert pixels == {(255, 255, 255), (255, 0, 0)}
    with pytest.raises(ValueError, match="only 2 readable files \\(1 skipped\\)"):
        build_demo_dataset("clipart", tmp_path / "out", {"n": 3}, seed=0, on_bad_image="skip")


def test_clipart_pool_avoids_id_categories():
    paths = demo.clipart_paths()
    assert len(paths) > 1000 and paths == sorted(paths)
    assert not any(demo.CLIPART_EXCLUDE.search(str(p)) for p in paths)


def _stamps_tree(tmp_path: Path, monkeypatch) -> Path:
    """Four stamps as Tux Paint lays them out (subfolders, an .svg beside the PNGs), one of them broken."""
    root = tmp_path / "tuxpaint/stamps/animals"
    (root / "birds/cartoon").mkdir(parents=True)
    (root / "fish").mkdir()
    (root / "birds/owl.png").write_bytes(_png_bytes(Image.new("RGBA", (30, 60), (255, 0, 0, 128))))
    (root / "birds/cartoon/tux.png").write_bytes(_png_bytes(Image.new("LA", (50, 50), (0, 255))))
    (root / "birds/swallow.svg").write_text("<svg/>")
    (root / "fish/clownfish.png").write_bytes(_png_bytes(Image.new("RGBA", (8, 8), (0, 0, 255, 0))))
    (root / "fish/broken.png").write_bytes(_png_bytes(Image.new("RGB", (40, 40)))[:60])
    monkeypatch.setenv(demo.SYSTEM_DATA_ENV, str(tmp_path))
    return root


def test_stamps_take_at_most_n_each_stamp_once_and_composite_on_white(tmp_path, monkeypatch, caplog):
    """``n`` is a maximum for stamps_animals: above the collection every readable stamp is used once (no
    repeats), below it a seeded sample of n; the sidecar records the count beside the requested n."""
    root = _stamps_tree(tmp_path, monkeypatch)
    assert [str(p.relative_to(root)) for p in demo.stamp_paths()] == [
        "birds/cartoon/tux.png", "birds/owl.png", "fish/broken.png", "fish/clownfish.png"]
    with pytest.raises(ValueError, match="broken.png"):
        build_demo_dataset("stamps_animals", tmp_path / "out", {"n": 10}, seed=0)
    manifest = build_demo_dataset("stamps_animals", tmp_path / "out", {"n": 10}, seed=0, on_bad_image="skip")
    assert "n=10 exceeds the 4 stamps" in caplog.text
    assert len(manifest) == 3 and [Path(s["path"]).name for s in manifest.attrs["skipped"]] == ["broken.png"]
    images = np.stack(_pixels(manifest["path"]))  # in path order: tux, owl, clownfish
    assert images.shape == (3, 64, 64, 3)
    alpha = 128 / 255  # half-transparent red on white, as NumPy composites it
    np.testing.assert_allclose(images[1, 32, 32], np.rint(255 * (1 - alpha) + np.array([255, 0, 0]) * alpha), atol=1)
    assert (images[1, :, :16] == 255).all()  # a 30x60 stamp fitted to 32x64, centred on white
    assert (images[0, 8:56, 8:56] == 0).all() and (images[2] == 255).all()  # opaque black LA; transparent
    sidecar = tmp_path / "stamps_animals.csv"
    write_manifest_sidecar(sidecar, manifest, "skip")
    record = json.loads(Path(f"{sidecar}.json").read_text())
    assert record["images"] == 3 and record["sizes"] == {"n": 10} and record["skipped"] == 1
    samples = [build_demo_dataset("stamps_animals", tmp_path / f"s{seed}", {"n": 2}, seed=seed, on_bad_image="skip")
               for seed in range(6)]
    assert all(len(m) == 2 for m in samples)
    chosen = {tuple(hashlib.sha256(a.tobytes()).hexdigest() for a in _pixels(m["path"])) for m in samples}
    assert len(chosen) > 1 and all(len(set(pair)) == 2 for pair in chosen)  # seeded, never a repeat


def test_stamps_animals_are_every_tuxpaint_animal_png_once():
    """The real collection: at the demo's n = 500, each of the package's PNG stamps exactly once."""
    root = sources.system_data_root() / sources.SOURCES["tuxpaint-animals"].relative
    pngs = sorted(root.rglob("*.png"))
    assert len(pngs) == 146 and len(list(root.rglob("*.svg"))) == 10
    (part,) = DEMO_DATASETS["stamps_animals"].builder({"n": 500}, 0)
    assert part.source.tolist() == list(range(146)) and part.images.shape == (146, 64, 64, 3)
    assert len({hashlib.sha256(image.tobytes()).hexdigest() for image in part.images}) == 146
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in pngs}) == 146


def test_build_is_atomic(tmp_path, monkeypatch):
    stale = tmp_path / ".digits.tmp" / "junk.txt"
    stale.parent.mkdir()
    stale.write_text("x")
    old = tmp_path / "digits" / "old.png"
    old.parent.mkdir()
    old.write_text("x")
    manifest = build_demo_dataset("digits", tmp_path, {"n": 3}, seed=0)
    assert not stale.parent.exists() and not old.exists() and len(manifest) == 3

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "validate_manifest", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_demo_dataset("stamps_animals", tmp_path, {"n": 3}, seed=0)
    assert not (tmp_path / "stamps_animals").exists() and not (tmp_path / ".stamps_animals.tmp").exists()


def test_sizes_and_names_are_validated(tmp_path):
    with pytest.raises(ValueError, match="missing 'val_per_class'"):
        build_demo_dataset("fashion_mnist", tmp_path, {"train_per_class": 1, "test_per_class": 1}, 0)
    with pytest.raises(ValueError, match="sizes\\['n'\\] must be a positive integer"):
        build_demo_dataset("digits", tmp_path, {"n": 0}, 0)
    with pytest.raises(ValueError, match="n=5000 exceeds the 1797"):
        build_demo_dataset("digits", tmp_path, {"n": 5000}, 0)
    with pytest.raises(ValueError, match="unknown demo dataset 'mnist'"):
        build_demo_dataset("mnist", tmp_path, SIZES, 0)
