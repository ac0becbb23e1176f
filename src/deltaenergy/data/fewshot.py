"""Seeded few-shot subsets of an ID manifest's train split.

Draws are *nested by seed*: for each class, one permutation of its train rows is fixed by
``numpy.random.default_rng([seed, label])`` (independent of ``shots``) and the first ``shots`` rows
are taken, so for one seed the 1-shot set is inside the 2-shot set, ... inside the 16-shot set, and a
result changes between shot counts only by the added images. Different seeds are independent draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEWSHOT_COLUMNS = ("row", "label", "path")


def fewshot_indices(manifest: pd.DataFrame, shots: int, seed: int) -> pd.DataFrame:
    """Pick exactly ``shots`` train images per class from ``manifest``.

    ``manifest`` is an ID manifest (columns as in :mod:`deltaenergy.data.manifest`); the classes are
    every label of its ``role == 'id'`` rows (all splits), and only ``split == 'train'`` rows are drawn.
    Returns columns ``row`` (0-based position in ``manifest``), ``label``, ``path``, sorted by
    ``(label, row)``. Raises ``ValueError`` naming the class if it has fewer than ``shots`` train rows.
    """
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    labels = manifest["label"].to_numpy(dtype=np.int64)
    is_id = (manifest["role"] == "id").to_numpy()
    is_train = is_id & (manifest["split"] == "train").to_numpy()
    classes = np.unique(labels[is_id])
    if classes.size == 0:
        raise ValueError("manifest has no role='id' rows; pass the ID dataset's manifest")
    counts = np.bincount(labels[is_train], minlength=int(classes.max()) + 1)[classes]
    short = classes[counts < shots]
    if short.size:
        detail = ", ".join(f"class {c}: {counts[classes == c][0]}" for c in short)
        raise ValueError(
            f"{shots}-shot needs {shots} train images per class, but {detail} train images; "
            f"lower shots or enlarge the train pool (train_per_class)"
        )
    rows = np.flatnonzero(is_train)
    chosen = []
    for label in classes:
        pool = rows[labels[rows] == label]
        order = np.random.default_rng([int(seed), int(label)]).permutation(pool.size)
        chosen.append(np.sort(pool[order[:shots]]))
    picked = np.concatenate(chosen)
    return pd.DataFrame(
        {
            "row": picked,
            "label": labels[picked],
            "path": manifest["path"].to_numpy()[picked],
        }
    )
