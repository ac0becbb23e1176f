"""The report index page and the helpers the report notebooks share (aggregation over seeds)."""

from __future__ import annotations

import html
import json
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


def write_index(
    path: str | Path, captions: dict[str, str], provenance: dict, figures: dict[str, str] | None = None
) -> None:
    """Write ``index.html`` linking each ``<name>.html`` report with its caption, each figure (``{path
    relative to the index: caption}``) with its caption, plus provenance."""
    items = "\n".join(
        f'<li><a href="{html.escape(name)}.html">{html.escape(name.replace("_", " "))}</a>: {html.escape(text)}</li>'
        for name, text in captions.items()
    )
    figure_items = "\n".join(
        f'<li><a href="{html.escape(rel)}">{html.escape(Path(rel).stem.replace("_", " "))}</a>: {html.escape(text)}</li>'
        for rel, text in (figures or {}).items()
    )
    figure_list = f"<h2>Figures</h2>\n<ul>\n{figure_items}\n</ul>" if figure_items else ""
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
{figure_list}
<h2>Provenance</h2>
<table>
{rows}
</table>
<p>Full provenance: <a href="../provenance.json">provenance.json</a>.</p>
</body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)


STANDIN_MARKDOWN = (
    "> **Stand-in backbone.** These numbers come from the offline demo backbone `standin-conse` "
    "(EfficientNet-Lite0 + MiniLM joined by ConSE), not from CLIP: they exercise the study, "
    "they are not the paper's numbers."
)


def read_provenance(results_dir: str | Path) -> dict | None:
    """``provenance.json`` of a results folder (None when absent, e.g. a notebook run by hand early)."""
    path = Path(results_dir) / "provenance.json"
    return json.loads(path.read_text()) if path.exists() else None


def standin_banner(provenance: dict | None) -> str | None:
    """The stand-in warning (Markdown) when the run used the demo backbone, else None."""
    return STANDIN_MARKDOWN if provenance and provenance["backbone"]["name"] == "standin-conse" else None


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG atomically (tight bounding box, so no label is cut off)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
