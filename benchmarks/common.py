"""Helpers shared by the benchmark scripts: timing statistics, machine description, the random-init CLIP.

Every figure is the median of repeated wall-clock runs (``time.perf_counter``) with their min and max.
Other processes on the machine inflate the numbers; ``machine()`` records the load average so a reader can
tell, and ratios measured in the same process are what to compare across machines.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import statistics
import time
from pathlib import Path

import torch

from deltaenergy.io import write_json
from deltaenergy.provenance import cpu_model, sha256_file

RESULTS = Path(__file__).resolve().parent / "results"


def stats(times: list[float]) -> dict:
    """Median, min and max of repeated timings (seconds), and the timings."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Seconds of ``repeats`` calls of ``fn`` and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def machine() -> dict:
    """Host, time, CPU, thread count, library versions and the 1/5/15-minute load average now."""
    return {
        "host": socket.gethostname(),
        "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "loadavg": os.getloadavg(),
    }


def save_result(out: Path | str, prefix: str, result: dict) -> Path | None:
    """Write ``result`` to ``out/<prefix>-<host>-<yyyymmdd>.json`` and say so; ``out == '-'``: write nothing."""
    if str(out) == "-":
        return None
    path = Path(out) / f"{prefix}-{result['host']}-{time.strftime('%Y%m%d')}.json"
    write_json(path, result)
    print(f"wrote {path}")
    return path


def random_clip(arch: str, folder: Path, seed: int = 0, device: str = "cpu"):
    """(open_clip model, OpenClipBackbone) sharing one random-init ``arch`` model (no pretrained weights).

    The state dict is saved under ``folder`` and loaded through the backbone as a user's checkpoint
    (``arch`` an open_clip name or a model-config JSON); the backbone's model is returned as the model.
    """
    import open_clip

    from deltaenergy.backbones import build_backbone
    from deltaenergy.backbones.openclip import _DropMessage, _resolve_arch

    name = _resolve_arch(arch)
    quiet = _DropMessage("initialized randomly")  # open_clip's notice: random weights are intended here
    logging.getLogger().addFilter(quiet)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name)
    finally:
        logging.getLogger().removeFilter(quiet)
    path = Path(folder) / f"{name}-seed{seed}.pt"
    torch.save(model.state_dict(), path)
    backbone = build_backbone("openclip", arch=arch, checkpoint=str(path), sha256=sha256_file(path), device=device)
    return backbone.model, backbone
