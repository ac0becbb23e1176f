"""Atomic file writes: a reader never sees a half-written output.

Every writer here writes to a temporary file in the destination folder, flushes it to disk (``fsync``:
network file systems may report a full disk or quota only then) and renames it into place (``os.replace``
is atomic on POSIX within one file system). A failed write (full disk included) leaves neither the output
nor the temporary file; a killed process can leave its ``.<name>.*.tmp`` file, which the next write of
the same output removes. An output with its final name is therefore always complete.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_MKSTEMP_NAME = re.compile(r"[a-z0-9_]{8}")
"""The random part of a ``tempfile.mkstemp`` name."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed writer of this output
        if _MKSTEMP_NAME.fullmatch(stale.name[len(path.name) + 2 : -4]):  # not another output's ("x.npz.json")
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # mkstemp creates 0600 files; give the output the permissions a plain open() would (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays to an uncompressed ``.npz`` atomically (read back with ``allow_pickle=False``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file; pickled objects are refused."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV (no index), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_parquet(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as Parquet (no index), atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
