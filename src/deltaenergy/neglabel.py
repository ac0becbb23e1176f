"""NegLabel's negative labels (Jiang et al., ICLR 2024): WordNet candidates and NegMining.

Candidates are WordNet 3.0 noun and adjective lemmas read from the Debian package ``wordnet-base``
(``<root>/index.noun``, ``<root>/index.adj``; underscores become spaces).

NegMining, as the authors' code does it: with L2-normalised text features u_i of candidate i and t_k of
the K ID class names (ID names and nouns use ``template``; adjectives ``"This is a {} photo"``),

    d_i = eta-th percentile over k of <u_i, t_k>     (linear interpolation, as ``np.percentile``)

and each pool of candidates (nouns, adjectives) keeps its ``floor(pct_neg * n_pool)`` candidates of
lowest d_i, i.e. farthest from the ID labels. Defaults: eta = 95, pct_neg = 0.15. The authors' own
prompt for ID names and nouns is ``"the nice {}"``; this project's default is ``"a photo of a {}."``.

Mined labels are saved as an ``.npz`` (``words`` unicode array, ``features`` float32 ``[M, D]``, no
pickle) plus a JSON sidecar with the mining settings, so a workflow can cache them per backbone and ID
label set.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deltaenergy.data.sources import SYSTEM_DATA_ENV, resolve, system_data_root
from deltaenergy.io import read_npz, write_json, write_npz

WORDNET_INDEX = {"noun": "index.noun", "adj": "index.adj"}
"""Part of speech -> WordNet index file (in ``wordnet-base``'s ``/usr/share/wordnet``)."""

POOL_TEMPLATES = {"adj": "This is a {} photo"}
"""Prompts of candidate pools that do not use the noun/ID template (the authors' adjective prompt)."""

META_KEYS = ("backbone", "template", "percentile", "pct_neg", "n_candidates")
"""Keys every saved negative-label set records in its JSON sidecar."""


# --- WordNet candidates --------------------------------------------------------------------------
def wordnet_root() -> Path:
    """Folder of WordNet's database files: ``$DELTAENERGY_SYSTEM_DATA/wordnet`` (default /usr/share)
    when installed, else the verified download (:func:`deltaenergy.data.sources.resolve`)."""
    try:
        return resolve("wordnet")[0]
    except FileNotFoundError:
        return system_data_root() / "wordnet"  # _read_index names the missing file and the fix


def _read_index(path: Path) -> list[str]:
    """Lemmas of a WordNet ``index.*`` file: first field of each line; license lines start with 2 spaces."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: NegLabel reads WordNet 3.0 from the Debian package 'wordnet-base'. "
            f"Fix: sudo apt-get install wordnet-base, or let the workflow's rule fetch_source download "
            f"it (or set {SYSTEM_DATA_ENV} to the folder that holds wordnet/{path.name})"
        )
    lemmas = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  ") or not line.strip():
                continue
            lemmas.append(line.split(maxsplit=1)[0].replace("_", " "))
    if not lemmas:
        raise ValueError(f"{path} holds no lemmas. Fix: sudo apt-get install --reinstall wordnet-base")
    return lemmas


def wordnet_lemmas(root: str | Path | None = None, exclude: Sequence[str] = ()) -> dict[str, list[str]]:
    """WordNet noun and adjective lemmas per pool ``{"noun": [...], "adj": [...]}``, each sorted.

    ``root``: folder holding ``index.noun``/``index.adj`` (default :func:`wordnet_root`). Lemmas equal to
    an ``exclude`` entry (case-insensitive; the ID class names) are dropped; a lemma that is both a noun
    and an adjective is listed as a noun only.
    """
    folder = wordnet_root() if root is None else Path(root)
    drop = {name.casefold() for name in exclude}
    pools, seen = {}, set()
    for pos, filename in WORDNET_INDEX.items():
        kept = sorted({w for w in _read_index(folder / filename) if w.casefold() not in drop} - seen)
        pools[pos] = kept
        seen.update(kept)
    return pools


def wordnet_words(root: str | Path | None = None, exclude: Sequence[str] = ()) -> list[str]:
    """All WordNet noun and adjective lemmas, deduplicated and sorted (see :func:`wordnet_lemmas`)."""
    return sorted(w for pool in wordnet_lemmas(root, exclude).values() for w in pool)


# --- NegMining -----------------------------------------------------------------------------------
def _encode(backbone, texts: list[str], batch_size: int, progress: bool, desc: str) -> torch.Tensor:
    """``backbone.encode_text`` of ``texts`` in batches of similar length (little padding), input order."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            batch = [texts[i] for i in order[start : start + batch_size]]
            chunks.append(backbone.encode_text(batch).detach().float().cpu())
    feats = torch.empty(len(texts), chunks[0].shape[1])
    feats[torch.as_tensor(order)] = torch.cat(chunks)
    return feats


def _percentiles(cand: torch.Tensor, ids: torch.Tensor, percentile: float) -> np.ndarray:
    """Per candidate row: the ``percentile``-th percentile of its cosine to the ID rows (float64)."""
    ids = ids.double()
    rows = max(1, (1 << 22) // ids.shape[0])
    out = [torch.quantile(cand[i : i + rows].double() @ ids.T, percentile / 100.0, dim=1)
           for i in range(0, cand.shape[0], rows)]
    return torch.cat(out).numpy()


def _pools(words) -> dict[str, list[str]]:
    """``words`` as ``{pool: [words]}`` (a plain list is one pool), validated."""
    raw = dict(words) if isinstance(words, Mapping) else {"words": words}
    if any(isinstance(ws, str) for ws in raw.values()):
        raise ValueError("words: expected a list of words or a mapping {pool: list of words}, not a string")
    pools = {pool: list(ws) for pool, ws in raw.items()}
    flat = [w for pool in pools.values() for w in pool]
    if not flat:
        raise ValueError("words: no candidate words given")
    if any(not isinstance(w, str) or not w.strip() for w in flat):
        raise ValueError("words: every candidate must be a non-empty string")
    if len(set(flat)) != len(flat):
        dups = sorted(w for w, n in Counter(flat).items() if n > 1)[:5]
        raise ValueError(f"words: candidates must be unique; duplicated: {dups}")
    return pools


def mine_negative_labels(
    backbone,
    id_classnames: Sequence[str],
    words: Sequence[str] | Mapping[str, Sequence[str]],
    template: str = "a photo of a {}.",
    percentile: float = 95.0,
    pct_neg: float = 0.15,
    batch_size: int = 1024,
    progress: bool = True,
    max_neg: int | None = None,
    max_candidates: int | None = None,
    seed: int = 0,
) -> tuple[list[str], torch.Tensor]:
    """NegMining: the candidate words farthest from the ID labels and their text features ``[M, D]``.

    ``backbone``: anything with ``encode_text(list[str]) -> [B, D]`` L2-normalised features.
    ``words``: one candidate pool (a list) or pools ``{name: words}`` (e.g. :func:`wordnet_lemmas`), each
    ranked separately, as the authors rank nouns and adjectives. Candidates are prompted with
    ``template`` (also used for the ID names) unless their pool is named in ``POOL_TEMPLATES``.
    Each pool keeps its ``floor(pct_neg * n_pool)`` candidates of lowest ``percentile``-th percentile
    cosine to the ID labels. Returned words are sorted by that value (farthest first), ties by word;
    ``max_neg`` keeps only the first ``max_neg`` of them.
    ``max_candidates``: mine from a random subset of that many candidates (``default_rng(seed)``, drawn
    over all pools together) to bound the encoding time; None mines all.
    """
    if not id_classnames:
        raise ValueError("id_classnames: need at least one ID class name")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}' for the word, got {template!r}")
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    if not 0.0 < float(pct_neg) <= 1.0:
        raise ValueError(f"pct_neg must be in (0, 1], got {pct_neg!r}")
    counts = {"batch_size": batch_size, "max_neg": max_neg, "max_candidates": max_candidates}
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    pools = _pools(words)

    items = [(pool, w) for pool, ws in pools.items() for w in ws]
    if max_candidates is not None and max_candidates < len(items):
        keep = np.sort(np.random.default_rng(seed).choice(len(items), int(max_candidates), replace=False))
        items = [items[i] for i in keep]
    pool_of = np.array([pool for pool, _ in items])
    n_keep = {pool: math.floor(float(pct_neg) * int((pool_of == pool).sum())) for pool in pools}
    if not any(n_keep.values()):
        raise ValueError(f"pct_neg={pct_neg} keeps no candidate of pools with sizes "
                         f"{ {p: int((pool_of == p).sum()) for p in pools} }; raise pct_neg or add words")
    prompts = [POOL_TEMPLATES.get(pool, template).format(w) for pool, w in items]
    with torch.no_grad():
        ids = backbone.encode_text([template.format(c) for c in id_classnames]).detach().float().cpu()
    desc = f"NegMining: encoding {len(prompts)} candidates"
    feats = _encode(backbone, prompts, int(batch_size), progress, desc)
    dist = _percentiles(feats, ids, float(percentile))

    names = np.array([w for _, w in items], dtype=np.str_)
    chosen = []
    for pool in pools:
        idx = np.flatnonzero(pool_of == pool)
        chosen.append(idx[np.lexsort((names[idx], dist[idx]))[: n_keep[pool]]])
    chosen = np.concatenate(chosen)
    chosen = chosen[np.lexsort((names[chosen], dist[chosen]))][:max_neg]
    return names[chosen].tolist(), feats[torch.as_tensor(chosen)]


# --- cache ---------------------------------------------------------------------------------------
def meta_path(path: str | Path) -> Path:
    """The JSON sidecar of a negative-label ``.npz``: same name, suffix ``.json``."""
    return Path(path).with_suffix(".json")


def save_negative_labels(path: str | Path, words: Sequence[str], feats: torch.Tensor, meta: Mapping) -> None:
    """Write ``words`` and ``feats`` ``[M, D]`` to ``path`` (.npz) and ``meta`` to its JSON sidecar.

    ``meta`` must hold ``META_KEYS`` (backbone = its ``cache_key()``); ``n_negatives`` and
    ``feature_dim`` are added. The sidecar is written first, so a complete ``.npz`` always has one.
    """
    arr = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(words):
        raise ValueError(f"feats: expected shape [M={len(words)}, D], got {tuple(arr.shape)}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"meta: missing key(s) {missing}; required: {list(META_KEYS)}")
    write_json(meta_path(path), {**meta, "n_negatives": len(words), "feature_dim": int(arr.shape[1])})
    write_npz(path, words=np.asarray(list(words), dtype=np.str_), features=arr)


def load_negative_labels(path: str | Path) -> tuple[list[str], torch.Tensor, dict]:
    """Read what :func:`save_negative_labels` wrote: ``(words, features [M, D] float32, meta)``."""
    path, side = Path(path), meta_path(path)
    fix = "Fix: delete it and rerun the negative-label mining"
    for p in (path, side):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found. {fix}")
    data = read_npz(path)
    if set(data) != {"words", "features"} or data["words"].dtype.kind != "U":
        raise ValueError(f"{path}: expected arrays 'words' (unicode) and 'features', got "
                         f"{ {k: str(v.dtype) for k, v in data.items()} }. {fix}")
    meta = json.loads(side.read_text())
    words, feats = data["words"].tolist(), data["features"]
    if feats.shape != (len(words), meta.get("feature_dim")) or meta.get("n_negatives") != len(words):
        raise ValueError(f"{side} does not describe {path} (n_negatives/feature_dim differ from "
                         f"{len(words)} words x features {feats.shape}). {fix}")
    return words, torch.from_numpy(feats), meta
