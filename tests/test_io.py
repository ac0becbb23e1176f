"""Atomic writers: all-or-nothing outputs with ordinary permissions."""

import os
import stat

import numpy as np
import pytest

from deltaenergy.io import atomic_path, read_npz, write_json, write_npz


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_outputs_get_umask_permissions_and_round_trip(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    write_npz(tmp_path / "a.npz", v=np.arange(3))
    umask = os.umask(0)
    os.umask(umask)
    for name in ["a.json", "a.npz"]:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
    assert read_npz(tmp_path / "a.npz")["v"].tolist() == [0, 1, 2]
