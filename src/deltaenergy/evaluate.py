"""From cached features and class text features to the score tables and the tidy metrics tables.

Scores table (one per run and dataset): one row per evaluated image with ``path``, ``dataset``,
``split``, ``role``, ``label``, ``pred`` (argmax of the cosine similarities) and one column per
configured score (higher = more in-distribution). The ID dataset is scored on its ``val`` and ``test``
splits; the metrics use ``test`` only (``val`` is kept for model selection).

A dataset whose images can only have some of the ID labels (its manifest sidecar's ``class_subset``, e.g.
ImageNet-A/R's 200 of the 1000 ImageNet classes) also gets ``pred_subset``: the argmax over those classes
only (an ID label index). Its accuracy rows are then ``<dataset>`` (classified among its subset, the
standard protocol) and ``<dataset>@all`` with role ``covariate_all`` (among all ID classes), so that
averages over the ``covariate`` rows count each set once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .metrics import accuracy, detection_metrics
from .scores import compute_score

RUN_DIR = re.compile(r"shots(?P<shots>\d+)_seed(?P<seed>\d+)$")


def score_table(
    feats: dict[str, torch.Tensor],
    text: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    manifest: pd.DataFrame,
    scores: dict,
    neg_text: torch.Tensor | None = None,
    chunk: int = 4096,
    class_subset: list[int] | None = None,
    return_sims: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, torch.Tensor]:
    """Score every evaluated row of ``manifest`` under the ``scores`` config.

    ``feats``: cached features in manifest order, ``global`` [N, D] and optionally ``local`` [N, P, D];
    ``text`` [K, D] class text features, or a function of a chunk's global features [n, D] giving
    per-image class text features [n, K, D] (CoCoOp: ``lambda f: image_conditioned_text(learner, f)``;
    global and local similarities then use each image's own text, and ``text_features`` is not passed
    to the scores); ``neg_text`` [M, D] NegLabel's negative-label features; ``class_subset`` the ID label
    indices this dataset's images can have (adds ``pred_subset``; None = all). Rows are processed in chunks
    so local similarities (chunk × P × K) and per-image text (chunk × K × D) never exceed memory.
    With ``return_sims``, also the cosine similarities ``[n, K]`` of the table's rows (what further
    scores, e.g. the ΔEnergy c sweep, reuse instead of running the text tower again).
    """
    keep = (manifest["role"] != "id") | manifest["split"].isin(["val", "test"])
    rows = torch.from_numpy(np.flatnonzero(keep.to_numpy()))
    table = manifest.iloc[rows.numpy()][["path", "dataset", "split", "role", "label"]].reset_index(drop=True)
    preds, subset_preds, all_sims, columns = [], [], [], {name: [] for name in scores}
    subset = None if class_subset is None else torch.as_tensor(sorted(class_subset), dtype=torch.long)
    for part in rows.split(chunk):
        image = feats["global"][part]
        if callable(text):
            per_image = text(image)
            sims = torch.einsum("nd,nkd->nk", image, per_image)
            extras = {"image_features": image}
            if "local" in feats:
                extras["local_sims"] = torch.einsum("npd,nkd->npk", feats["local"][part], per_image)
        else:
            sims = image @ text.T
            extras = {"image_features": image, "text_features": text}
            if "local" in feats:
                extras["local_sims"] = feats["local"][part] @ text.T
        if neg_text is not None:
            extras["neg_sims"] = image @ neg_text.T
        preds.append(sims.argmax(dim=-1))
        if subset is not None:
            subset_preds.append(subset[sims[:, subset].argmax(dim=-1)])
        all_sims.append(sims)
        for column, spec in scores.items():
            params = {k: v for k, v in spec.items() if k != "score"}
            columns[column].append(compute_score(spec["score"], sims, **params, **extras))
    table["pred"] = torch.cat(preds).numpy()
    if subset is not None:
        table["pred_subset"] = torch.cat(subset_preds).numpy()
    for column, parts in columns.items():
        table[column] = torch.cat(parts).double().numpy()
    if return_sims:
        return table, torch.cat(all_sims)
    return table


def read_score_tables(paths: list[str | Path]) -> pd.DataFrame:
    """Concatenate score tables, adding ``method``, ``shots``, ``seed`` from their folder names."""
    frames = []
    for path in map(Path, paths):
        match = RUN_DIR.match(path.parent.name)
        if match is None:
            raise ValueError(f"{path}: expected .../scores/<method>/shots<K>_seed<S>/<dataset>.parquet")
        frame = pd.read_parquet(path)
        frame.insert(0, "method", path.parent.parent.name)
        frame.insert(1, "shots", int(match["shots"]))
        frame.insert(2, "seed", int(match["seed"]))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def metrics_tables(scores: pd.DataFrame, score_columns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy detection rows (per run, score, OOD dataset; ID = ID test split) and accuracy rows."""
    detection, acc = [], []
    for (method, shots, seed), run in scores.groupby(["method", "shots", "seed"], sort=True):
        id_test = run[(run["role"] == "id") & (run["split"] == "test")]
        for dataset, part in run[run["role"] != "ood"].groupby("dataset", sort=True):
            part = part[part["split"] == "test"] if part["role"].iloc[0] == "id" else part
            labels, role = part["label"].to_numpy(), part["role"].iloc[0]
            preds = {(dataset, role): part["pred"]}
            if "pred_subset" in part and part["pred_subset"].notna().all():
                preds = {(dataset, role): part["pred_subset"], (f"{dataset}@all", f"{role}_all"): part["pred"]}
            for (name, name_role), pred in preds.items():
                acc.append({"method": method, "shots": shots, "seed": seed, "dataset": name, "role": name_role,
                            "acc": accuracy(labels, pred.to_numpy().astype(np.int64))})
        for dataset, ood in run[run["role"] == "ood"].groupby("dataset", sort=True):
            for column in score_columns:
                try:
                    m = detection_metrics(id_test[column].to_numpy(), ood[column].to_numpy())
                except ValueError as err:
                    raise ValueError(f"scores of {method} shots{shots}_seed{seed}, column '{column}', OOD set "
                                     f"'{dataset}': {err}") from err
                detection.append({"method": method, "shots": shots, "seed": seed, "score": column, "dataset": dataset, **m})
    return pd.DataFrame(detection), pd.DataFrame(acc)
