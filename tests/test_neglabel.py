"""NegLabel's negative labels: WordNet parsing, NegMining against a NumPy reference, the .npz cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deltaenergy.data.classes import FASHION_MNIST_CLASSES
from deltaenergy.data.demo import SYSTEM_DATA_ENV
from deltaenergy.neglabel import (
    META_KEYS,
    load_negative_labels,
    meta_path,
    mine_negative_labels,
    save_negative_labels,
    wordnet_lemmas,
    wordnet_words,
)

LICENSE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  \n"
    "  3   \n"
    "  4 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  \n"
)


@pytest.fixture
def fake_wordnet(tmp_path, monkeypatch):
    """A tiny WordNet under ``$DELTAENERGY_SYSTEM_DATA/wordnet`` with license headers like the real files."""
    folder = tmp_path / "wordnet"
    folder.mkdir()
    (folder / "index.noun").write_text(
        LICENSE
        + "'hood n 1 2 @ ; 1 0 08641944  \n"
        + "dog n 7 4 @ ~ #m #p 7 1 02084071 10114209  \n"
        + "hot_dog n 2 3 @ ~ + 2 0 07697537 10185793  \n"
        + "t-shirt n 1 2 @ ~ 1 0 04370048  \n"
        + "red n 2 2 @ ~ 2 0 04962784 08531773  \n"
    )
    (folder / "index.adj").write_text(
        LICENSE
        + "red a 1 2 & + 1 0 00381097  \n"
        + "well-made a 1 1 & 1 0 01123879  \n"
        + "ad_hoc a 1 1 & 1 0 01087276  \n"
    )
    monkeypatch.setenv(SYSTEM_DATA_ENV, str(tmp_path))
    return folder


# --- WordNet --------------------------------------------------------------------------------------
def test_wordnet_parses_index_files(fake_wordnet):
    pools = wordnet_lemmas(exclude=["T-Shirt"])
    assert pools == {"noun": ["'hood", "dog", "hot dog", "red"], "adj": ["ad hoc", "well-made"]}
    assert wordnet_words(exclude=["T-Shirt"]) == ["'hood", "ad hoc", "dog", "hot dog", "red", "well-made"]
    assert "t-shirt" in wordnet_words()
    assert wordnet_lemmas(root=fake_wordnet) == wordnet_lemmas()


def test_wordnet_missing_files_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(SYSTEM_DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"wordnet/index\.noun.*sudo apt-get install wordnet-base"):
        wordnet_words()
    (tmp_path / "wordnet").mkdir()
    (tmp_path / "wordnet" / "index.noun").write_text(LICENSE + "dog n 1 1 @ 1 0 02084071  \n")
    with pytest.raises(FileNotFoundError, match=r"index\.adj.*sudo apt-get install wordnet-base"):
        wordnet_words()


def test_wordnet_license_only_file_is_an_error(fake_wordnet):
    (fake_wordnet / "index.adj").write_text(LICENSE)
    with pytest.raises(ValueError, match=r"index\.adj holds no lemmas"):
        wordnet_words()


def test_real_wordnet_is_installed():
    """Fails (never skips) without Debian's wordnet-base: the error names the apt fix."""
    words = wordnet_words()
    assert len(words) > 100_000 and words == sorted(set(words))
    assert {"hot dog", "dog", "abstract"} <= set(words)
    assert not any("_" in w for w in words)
    assert "trouser" not in wordnet_words(exclude=FASHION_MNIST_CLASSES)


# --- NegMining on a fake backbone ---------------------------------------------------------------
class DictBackbone:
    """``encode_text`` from a fixed {text: unit vector} table; unknown texts raise KeyError."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.calls: list[int] = []

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(len(texts))
        return torch.from_numpy(np.stack([self.table[t] for t in texts])).float()


ID_NAMES = [f"class{k}" for k in range(7)]
WORDS = [f"w{i:02d}" + "x" * (i * 7 % 5) for i in range(40)] + ["b twin", "a twin"]  # lengths vary


def _unit(rng, n: int, d: int = 8) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def toy():
    rng = np.random.default_rng(3)
    ids, cands = _unit(rng, len(ID_NAMES)), _unit(rng, len(WORDS))
    cands[-1] = cands[-2] = -ids.mean(axis=0) / np.linalg.norm(ids.mean(axis=0))  # farthest, tied
    table = {f"a photo of a {c}.": v for c, v in zip(ID_NAMES, ids)}
    table |= {f"a photo of a {w}.": v for w, v in zip(WORDS, cands)}
    table |= {f"This is a {w} photo": -v for w, v in zip(WORDS, cands)}  # adjective prompt
    return DictBackbone(table), ids, dict(zip(WORDS, cands))


def _reference(words, vecs, ids, percentile, n_keep):
    """NumPy NegMining: lowest percentile of similarity first, ties by word."""
    d = np.percentile(vecs.astype(np.float64) @ ids.astype(np.float64).T, percentile, axis=1)
    return [words[i] for i in np.lexsort((np.array(words), d))[:n_keep]]


@pytest.mark.parametrize("percentile", [95.0, 50.0, 100.0])
def test_mining_matches_numpy_reference(toy, percentile):
    bb, ids, cand = toy
    chosen, feats = mine_negative_labels(bb, ID_NAMES, WORDS, percentile=percentile, progress=False)
    n_keep = math.floor(0.15 * len(WORDS))
    assert chosen == _reference(WORDS, np.stack([cand[w] for w in WORDS]), ids, percentile, n_keep)
    assert len(chosen) == n_keep == 6 and chosen[:2] == ["a twin", "b twin"]
    np.testing.assert_array_equal(feats.numpy(), np.stack([cand[w] for w in chosen]))


@pytest.mark.parametrize("pct_neg", [0.05, 0.5, 1.0])
def test_mining_keeps_pct_neg_fraction(toy, pct_neg):
    bb, ids, cand = toy
    chosen, feats = mine_negative_labels(bb, ID_NAMES, WORDS, pct_neg=pct_neg, progress=False)
    assert len(chosen) == feats.shape[0] == math.floor(pct_neg * len(WORDS))
    full = _reference(WORDS, np.stack([cand[w] for w in WORDS]), ids, 95.0, len(WORDS))
    assert chosen == full[: len(chosen)]
    capped, capped_feats = mine_negative_labels(bb, ID_NAMES, WORDS, pct_neg=pct_neg, max_neg=2,
                                                progress=False)
    assert capped == chosen[:2] and torch.equal(capped_feats, feats[:2])


def test_mining_is_deterministic_and_batch_independent(toy):
    bb, _, _ = toy
    first = mine_negative_labels(bb, ID_NAMES, WORDS, batch_size=1000, progress=False)
    second = mine_negative_labels(bb, ID_NAMES, WORDS, batch_size=5, progress=False)
    assert first[0] == second[0] and torch.equal(first[1], second[1])
    assert max(bb.calls) <= 1000 and bb.calls[-1] <= 5  # batches of at most batch_size texts


def test_mining_ranks_pools_separately_with_their_templates(toy):
    bb, ids, cand = toy
    nouns, adjs = WORDS[:20], WORDS[20:]
    chosen, feats = mine_negative_labels(bb, ID_NAMES, {"noun": nouns, "adj": adjs}, pct_neg=0.25,
                                         progress=False)
    vec = {w: cand[w] for w in nouns} | {w: -cand[w] for w in adjs}  # adjectives: "This is a {} photo"
    picked = _reference(nouns, np.stack([vec[w] for w in nouns]), ids, 95.0, 5)
    picked += _reference(adjs, np.stack([vec[w] for w in adjs]), ids, 95.0, 5)
    assert sorted(chosen) == sorted(picked)
    d = np.percentile(feats.double().numpy() @ ids.astype(np.float64).T, 95.0, axis=1)
    assert np.all(np.diff(d) >= 0)  # merged pools: farthest first


def test_max_candidates_subsamples_with_seed(toy):
    bb, ids, cand = toy
    a = mine_negative_labels(bb, ID_NAMES, WORDS, pct_neg=0.5, max_candidates=20, seed=1, progress=False)
    b = mine_negative_labels(bb, ID_NAMES, WORDS, pct_neg=0.5, max_candidates=20, seed=1, progress=False)
    c = mine_negative_labels(bb, ID_NAMES, WORDS, pct_neg=0.5, max_candidates=20, seed=2, progress=False)
    assert a[0] == b[0] and a[0] != c[0] and len(a[0]) == 10
    assert bb.calls[-1] == 20  # only the subset (plus the ID names) was encoded
    subset = [w for w in WORDS if w in set(np.array(WORDS)[np.sort(
        np.random.default_rng(1).choice(len(WORDS), 20, replace=False))])]
    assert a[0] == _reference(subset, np.stack([cand[w] for w in subset]), ids, 95.0, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"words": []}, "no candidate"),
        ({"words": "dog"}, "not a string"),
        ({"words": {"noun": "dog"}}, "not a string"),
        ({"words": ["dog", "dog"]}, "duplicated"),
        ({"words": ["dog", ""]}, "non-empty"),
        ({"template": "a photo"}, "template"),
        ({"pct_neg": 0.0}, "pct_neg"),
        ({"pct_neg": 0.01}, "keeps no candidate"),
        ({"percentile": 101}, "percentile"),
        ({"max_neg": 0}, "max_neg"),
        ({"id_classnames": []}, "id_classnames"),
    ],
)
def test_mining_rejects_bad_arguments(toy, kwargs, match):
    args = {"backbone": toy[0], "id_classnames": ID_NAMES, "words": WORDS, "progress": False} | kwargs
    with pytest.raises(ValueError, match=match):
        mine_negative_labels(**args)


# --- cache ---------------------------------------------------------------------------------------
def _meta():
    return {"backbone": {"name": "fake"}, "template": "a photo of a {}.", "percentile": 95.0,
            "pct_neg": 0.15, "n_candidates": 42}


def test_save_load_roundtrip(tmp_path):
    words = ["café", "hot dog", "'hood"]
    feats = torch.from_numpy(_unit(np.random.default_rng(0), 3))
    path = tmp_path / "neg" / "labels.npz"
    save_negative_labels(path, words, feats, _meta())
    got_words, got_feats, meta = load_negative_labels(path)
    assert got_words == words and torch.equal(got_feats, feats) and got_feats.dtype == torch.float32
    assert meta == _meta() | {"n_negatives": 3, "feature_dim": 8}
    assert meta_path(path) == tmp_path / "neg" / "labels.json"
    with np.load(path, allow_pickle=False) as data:  # no pickled objects
        assert data["words"].dtype.kind == "U"


def test_save_load_errors(tmp_path):
    feats = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="missing key"):
        save_negative_labels(tmp_path / "a.npz", ["x", "y"], feats, {"backbone": {}})
    with pytest.raises(ValueError, match=r"\[M=3, D\]"):
        save_negative_labels(tmp_path / "a.npz", ["x", "y", "z"], feats, _meta())
    with pytest.raises(FileNotFoundError, match="a.npz not found"):
        load_negative_labels(tmp_path / "a.npz")
    save_negative_labels(tmp_path / "a.npz", ["x", "y"], feats, _meta())
    side = meta_path(tmp_path / "a.npz")
    side.write_text(json.dumps(_meta() | {"n_negatives": 5, "feature_dim": 4}))
    with pytest.raises(ValueError, match="does not describe"):
        load_negative_labels(tmp_path / "a.npz")


# --- the real stand-in backbone on real WordNet words --------------------------------------------
def test_mining_with_standin_backbone_on_wordnet():
    from deltaenergy.backbones import build_backbone

    bb = build_backbone("standin-conse")
    all_words = wordnet_words(exclude=FASHION_MNIST_CLASSES)
    words = all_words[:: len(all_words) // 200][:200]
    chosen, feats = mine_negative_labels(bb, FASHION_MNIST_CLASSES, words, batch_size=64, progress=False)
    assert len(chosen) == feats.shape[0] == 30 and len(set(chosen)) == 30
    assert feats.shape[1] == bb.embed_dim
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(30))

    with torch.no_grad():
        ref = bb.encode_text([f"a photo of a {w}." for w in words]).double().numpy()
        ids = bb.encode_text([f"a photo of a {c}." for c in FASHION_MNIST_CLASSES]).double().numpy()
    d = dict(zip(words, np.percentile(ref @ ids.T, 95, axis=1)))
    torch.testing.assert_close(feats.double(), torch.from_numpy(ref[[words.index(w) for w in chosen]]),
                               atol=1e-5, rtol=0)
    kept = [d[w] for w in chosen]
    rest = [d[w] for w in words if w not in set(chosen)]
    assert max(kept) <= min(rest) + 1e-6  # the 15% farthest from the ID labels
    assert all(b >= a - 1e-6 for a, b in zip(kept, kept[1:]))  # farthest first
