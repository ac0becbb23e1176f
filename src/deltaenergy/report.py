"""The report index page and the helpers the report notebooks share (aggregation over seeds)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .io import atomic_path

STANDIN_NOTE = (
    "The demo backbone <b>standin-conse</b> is a stand-in for CLIP: an ImageNet EfficientNet-Lite0 image "
    "tower and an all-MiniLM-L6-v2 text tower joined without training by ConSE. Its numbers exercise the "
    "whole study offline; they are <b>not</b> the paper's numbers and say nothing about CLIP."
)


def mean_std(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, std (ddof=1; 0 for a single seed) and seed count of ``value`` grouped by ``by``."""
    grouped = frame.groupby(by, sort=True)[value]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def format_mean_std(frame: pd.DataFrame, scale: float = 100.0, digits: int = 1) -> pd.Series:
    """'mean ± std' strings (values scaled, e.g. to %); a single run (n = 1, e.g. zero-shot) shows its value."""

    def fmt(r) -> str:
        mean = f"{r['mean'] * scale:.{digits}f}"
        return mean if r["n"] == 1 else f"{mean} ± {r['std'] * scale:.{digits}f}"

    return frame.apply(fmt, axis=1)


def _skipped_summary(skipped: dict[str, int]) -> str:
    """'none', or each manifest with its count of unreadable files left out (listed in its sidecar)."""
    parts = [f"{n} from {manifest} (listed in {manifest}.json)" for manifest, n in sorted(skipped.items()) if n]
    return "; ".join(parts) or "none"


def write_index(path: str | Path, captions: dict[str, str], provenance: dict) -> None:
    """Write ``index.html`` linking each ``<name>.html`` report with its caption, plus provenance."""
    items = "\n".join(
        f'<li><a href="{html.escape(name)}.html">{html.escape(name.replace("_", " "))}</a>: {html.escape(text)}</li>'
        for name, text in captions.items()
    )
    prov = provenance
    standin = prov.get("backbone", {}) and prov["backbone"].get("name") == "standin-conse"
    rows = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in [
            ("benchmark", prov["benchmark"]),
            ("config sha256", prov["config_sha256"]),
            ("git commit", f"{prov['git']['commit']}{' (uncommitted changes)' if prov['git']['dirty'] else ''}"),
            ("backbone", prov.get("backbone")),
            ("device", prov["device"]),
            ("seeds", prov["seeds"]),
            ("images encoded", f"{prov['image_encoder_calls']} image-encoder calls for {prov['images']} images"),
            ("unreadable images skipped", _skipped_summary(prov.get("skipped_images", {}))),
            ("packages", ", ".join(f"{k} {v}" for k, v in prov["packages"].items())),
            ("data packages", ", ".join(f"{k} {v}" for k, v in prov["debian_data_packages"].items())),
        ]
    )
    note = f'<p class="note">{STANDIN_NOTE}</p>' if standin else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>deltaenergy: {html.escape(prov['benchmark'])} study</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}}
.note{{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em}}
table{{border-collapse:collapse}}th,td{{text-align:left;vertical-align:top;padding:.2em .6em;border-bottom:1px solid #ddd}}</style>
</head><body>
<h1>ΔEnergy study: {html.escape(prov['benchmark'])}</h1>
{note}
<h2>Reports</h2>
<ul>
{items}
</ul>
<h2>Provenance</h2>
<table>
{rows}
</table>
<p>Full provenance: <a href="../provenance.json">provenance.json</a>.</p>
</body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)
