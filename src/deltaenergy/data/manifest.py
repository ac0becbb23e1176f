"""Image manifests: one CSV row per image, in feature order.

Columns, exactly and in this order: ``path`` (string as written, relative to the working directory or
absolute), ``label`` (int; class index for ``id``/``covariate`` rows, -1 for ``ood`` rows), ``split``
(train | val | test), ``dataset`` (registry name), ``role`` (id | covariate | ood). Row ``i`` of a
manifest is row ``i`` of every feature/score file derived from it.

A manifest's sidecar ``<manifest>.json`` records how it was built: ``images`` (rows), ``on_bad_image``
and the source files left out as unreadable (``skipped`` count, ``skipped_files`` with each error); a real
dataset's also ``class_subset`` (the ID label indices its images can have, e.g. ImageNet-A's 200) and
``source`` (registry entry, folder, origin).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from deltaenergy.io import write_csv, write_json

MANIFEST_COLUMNS = ("path", "label", "split", "dataset", "role")
SPLITS = ("train", "val", "test")
ROLES = ("id", "covariate", "ood")
OOD_LABEL = -1


def _fail(source: str, column: str, problem: str) -> ValueError:
    return ValueError(f"manifest {source}: column '{column}' {problem}")


def _check_strings(frame: pd.DataFrame, column: str, source: str, allowed: tuple[str, ...] | None) -> None:
    values = frame[column]
    bad = values.isna() | ~values.map(lambda v: isinstance(v, str) and v != "")
    if bad.any():
        raise _fail(source, column, f"has empty or non-string values (first at row {int(np.argmax(bad))})")
    if allowed is not None:
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise _fail(source, column, f"has values {unknown}; allowed: {list(allowed)}")


def validate_manifest(frame: pd.DataFrame, source: str = "<DataFrame>") -> pd.DataFrame:
    """Return a checked copy of ``frame`` (``label`` as int64, a fresh RangeIndex).

    Raises ``ValueError`` naming ``source`` and the offending column: missing/extra/misordered columns,
    non-integer labels, unknown splits or roles, OOD rows with a label other than -1, or ID/covariate
    rows with a negative label.
    """
    columns = list(frame.columns)
    if columns != list(MANIFEST_COLUMNS):
        missing = [c for c in MANIFEST_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in MANIFEST_COLUMNS]
        column = (missing or extra or columns)[0]
        raise _fail(
            source,
            column,
            f"is wrong: expected columns {list(MANIFEST_COLUMNS)} in this order, got {columns} "
            f"(missing {missing}, unexpected {extra})",
        )
    frame = frame.reset_index(drop=True)
    for column, allowed in (("path", None), ("split", SPLITS), ("dataset", None), ("role", ROLES)):
        _check_strings(frame, column, source, allowed)
    labels = pd.to_numeric(frame["label"], errors="coerce")
    if labels.isna().any() or not np.array_equal(labels, np.round(labels)):
        raise _fail(source, "label", "must hold integers (class index, -1 for OOD)")
    labels = labels.astype(np.int64)
    is_ood = frame["role"] == "ood"
    if (labels[is_ood] != OOD_LABEL).any():
        raise _fail(source, "label", f"must be {OOD_LABEL} on every role='ood' row")
    if (labels[~is_ood] < 0).any():
        raise _fail(source, "label", "must be >= 0 on every role='id'/'covariate' row")
    out = frame.copy()
    out["label"] = labels
    return out


def write_manifest(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Validate ``frame`` and write it as CSV atomically."""
    write_csv(path, validate_manifest(frame, source=str(path)))


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest CSV (see the module docstring for the schema)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"manifest not found: {path}; run the data rule that builds it")
    frame = pd.read_csv(
        path, dtype={c: str for c in ("path", "split", "dataset", "role")}, keep_default_na=False
    )
    return validate_manifest(frame, source=str(path))


def write_manifest_sidecar(manifest_path: str | os.PathLike, frame: pd.DataFrame, on_bad_image: str,
                           **extra) -> None:
    """Write ``<manifest_path>.json``: row count, the requested ``frame.attrs['sizes']`` (a set may hold fewer
    images than asked for, see ``stamps_animals``), ``on_bad_image``, ``frame.attrs['skipped']`` (if any) and
    the ``extra`` keys (real datasets: ``class_subset``, ``source``)."""
    skipped = list(frame.attrs.get("skipped", []))
    write_json(f"{manifest_path}.json", {"images": len(frame), "sizes": frame.attrs.get("sizes", {}),
                                          "on_bad_image": on_bad_image, "skipped": len(skipped),
                                          "skipped_files": skipped, **extra})
