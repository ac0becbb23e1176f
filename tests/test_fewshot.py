"""Few-shot subsets and the manifest schema (no image files needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deltaenergy.data.fewshot import fewshot_indices
from deltaenergy.data.manifest import MANIFEST_COLUMNS, read_manifest, validate_manifest, write_manifest


def _manifest(train_counts: list[int], shuffle_seed: int = 0) -> pd.DataFrame:
    """An ID manifest with ``train_counts[c]`` train rows of class c, plus 2 val and 2 test rows each."""
    rows = []
    for label, count in enumerate(train_counts):
        rows += [("train", label)] * count + [("val", label)] * 2 + [("test", label)] * 2
    order = np.random.default_rng(shuffle_seed).permutation(len(rows))
    rows = [rows[i] for i in order]
    return pd.DataFrame(
        {
            "path": [f"img/{i:05d}.png" for i in range(len(rows))],
            "label": [label for _, label in rows],
            "split": [split for split, _ in rows],
            "dataset": "fashion_mnist",
            "role": "id",
        }
    )


def test_exact_shots_per_class_from_train_rows_sorted():
    manifest = _manifest([20, 17, 30, 16])
    picked = fewshot_indices(manifest, shots=16, seed=1)
    assert list(picked.columns) == ["row", "label", "path"]
    assert np.bincount(picked["label"]).tolist() == [16, 16, 16, 16]
    assert picked["row"].is_unique
    source = manifest.iloc[picked["row"]]
    assert (source["split"] == "train").all()
    np.testing.assert_array_equal(source["label"], picked["label"])
    np.testing.assert_array_equal(source["path"], picked["path"])
    pd.testing.assert_frame_equal(picked, picked.sort_values(["label", "row"], ignore_index=True))
    class3 = np.flatnonzero((manifest["label"] == 3) & (manifest["split"] == "train"))
    assert sorted(picked.loc[picked["label"] == 3, "row"]) == class3.tolist()


def test_deterministic_nested_and_seed_dependent():
    manifest = _manifest([40] * 5)
    first = fewshot_indices(manifest, 4, seed=2)
    pd.testing.assert_frame_equal(first, fewshot_indices(manifest, 4, seed=2))
    assert not first["row"].equals(fewshot_indices(manifest, 4, seed=3)["row"])
    sets = [set(fewshot_indices(manifest, k, seed=2)["row"]) for k in (1, 2, 4, 8, 16)]
    assert all(small < large for small, large in zip(sets, sets[1:]))


def test_draw_is_uniform_over_train_rows():
    manifest = _manifest([10])
    hits = np.zeros(len(manifest))
    for seed in range(2000):
        hits[fewshot_indices(manifest, 2, seed)["row"]] += 1
    train = manifest["split"] == "train"
    assert hits[~train].sum() == 0
    np.testing.assert_allclose(hits[train] / 2000, 0.2, atol=0.04)


def test_too_few_train_images_names_the_class():
    manifest = _manifest([16, 3, 16, 5])
    with pytest.raises(ValueError, match="class 1: 3, class 3: 5 train images"):
        fewshot_indices(manifest, 16, seed=1)
    no_train = _manifest([2, 2])
    no_train = no_train[~((no_train["label"] == 1) & (no_train["split"] == "train"))]
    with pytest.raises(ValueError, match="class 1: 0"):
        fewshot_indices(no_train.reset_index(drop=True), 1, seed=1)
    for shots in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="shots must be a positive integer"):
            fewshot_indices(manifest, shots, seed=1)


def test_manifest_roundtrip_keeps_order_and_dtypes(tmp_path):
    frame = _manifest([3, 3])
    frame.loc[0, "path"] = "NA"  # a legal file name that pandas would read as missing by default
    ood = pd.DataFrame(
        {"path": ["o/1.png"], "label": [-1], "split": ["test"], "dataset": "digits", "role": "ood"}
    )
    frame = pd.concat([frame, ood], ignore_index=True)
    write_manifest(tmp_path / "m.csv", frame)
    back = read_manifest(tmp_path / "m.csv")
    assert list(back.columns) == list(MANIFEST_COLUMNS) and back["label"].dtype == np.int64
    assert back["path"].tolist() == frame["path"].tolist()
    assert back["label"].tolist() == frame["label"].tolist()
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize(
    "mutate, column",
    [
        (lambda f: f.rename(columns={"label": "class"}), "label"),
        (lambda f: f.assign(extra=1), "extra"),
        (lambda f: f[["label", "path", "split", "dataset", "role"]], "label"),
        (lambda f: f.assign(label=["x"] + f["label"].tolist()[1:]), "label"),
        (lambda f: f.assign(label=f["label"] + 0.5), "label"),
        (lambda f: f.assign(split="training"), "split"),
        (lambda f: f.assign(role="in"), "role"),
        (lambda f: f.assign(role="ood"), "label"),
        (lambda f: f.assign(label=-1), "label"),
        (lambda f: f.assign(path=[""] + f["path"].tolist()[1:]), "path"),
    ],
)
def test_read_manifest_names_the_bad_column(tmp_path, mutate, column):
    path = tmp_path / "bad.csv"
    mutate(_manifest([2, 2])).to_csv(path, index=False)
    with pytest.raises(ValueError, match=f"manifest {path}: column '{column}'"):
        read_manifest(path)


def test_write_manifest_refuses_invalid_frames(tmp_path):
    with pytest.raises(ValueError, match="column 'role'"):
        write_manifest(tmp_path / "m.csv", _manifest([2]).assign(role="unknown"))
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_manifest(tmp_path / "missing.csv")
    assert validate_manifest(_manifest([1]).set_index("path", drop=False)).index.tolist() == [0, 1, 2, 3, 4]
