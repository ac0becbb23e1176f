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


def _tidy(x: float) -> float:
    """``x`` rounded to 6 decimals, so means summed in different orders print the same digits."""
    return round(float(x), 6)


def mean_std(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, std (ddof=1; 0 for a single seed) and seed count of ``value`` grouped by ``by``."""
    grouped = frame.groupby(by, sort=True)[value]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def format_mean_std(frame: pd.DataFrame, scale: float = 100.0, digits: int = 1) -> pd.Series:
    """'mean ± std' strings (values scaled, e.g. to %); a single run (n = 1, e.g. zero-shot) shows its value."""

    def fmt(r) -> str:
        mean = f"{_tidy(r['mean'] * scale):.{digits}f}"
        return mean if r["n"] == 1 else f"{mean} ± {_tidy(r['std'] * scale):.{digits}f}"

    return frame.apply(fmt, axis=1)


LOWER_IS_BETTER = {"fpr95", "fpr95_ood_pos"}


def _pct(mean: float, std: float, n: int) -> str:
    return format_mean_std(pd.DataFrame([{"mean": mean, "std": std, "n": n}])).iloc[0] + " %"


def _ranked(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    return table.sort_values("mean", ascending=metric in LOWER_IS_BETTER, kind="stable")


def _verdict(best: pd.Series, second: pd.Series) -> str:
    """'clearly ahead' when the gap exceeds both seed stds, else 'within seed noise'."""
    if best["n"] == 1 and second["n"] == 1:
        return "single runs, no seed spread to compare against"
    gap = abs(best["mean"] - second["mean"])
    return "clearly ahead" if gap > max(best["std"], second["std"]) else "within seed noise"


def paired_comparison(per_run: pd.DataFrame, value: str, a: str, b: str, metric: str) -> pd.DataFrame:
    """Method ``a`` vs ``b`` per shots over the seeds both ran: means, mean difference (a - b) and the
    number of seeds where ``a`` is better (``metric`` decides the direction). ``per_run`` has columns
    method, shots, seed and ``value``."""
    wide = per_run[per_run["method"].isin([a, b])].pivot_table(index=["shots", "seed"], columns="method", values=value)
    wide = wide.dropna()
    if wide.empty or not {a, b} <= set(wide.columns):
        return pd.DataFrame(columns=["shots", a, b, "difference", "a_better", "seeds"])
    diff = wide[a] - wide[b]
    better = (diff < 0) if metric in LOWER_IS_BETTER else (diff > 0)
    out = pd.DataFrame({a: wide[a], b: wide[b], "difference": diff, "a_better": better}).groupby("shots")
    return out.agg(**{a: (a, "mean"), b: (b, "mean"), "difference": ("difference", "mean"),
                      "a_better": ("a_better", "sum"), "seeds": ("difference", "count")}).reset_index()


def detection_summary(detection: pd.DataFrame, metric: str = "auroc", focus: str = "delta_energy",
                      pair: tuple[str, str] = ("ebm", "coop")) -> list[str]:
    """Plain-language findings from a detection table (rows per method, shots, seed, score, dataset).

    Per shots: the best (method, score) by ``metric`` averaged over OOD sets, with the runner-up and
    whether the gap exceeds the seed std; ``pair[0]`` vs ``pair[1]`` on the ``focus`` score (paired
    over seeds); and, at the largest shot count, the winning method per OOD set on ``focus``.
    """
    per_run = detection.groupby(["method", "shots", "seed", "score"], as_index=False)[metric].mean()
    table = mean_std(per_run, ["method", "shots", "score"], metric)
    name = metric.upper()
    lines = []
    for shots, group in table.groupby("shots"):
        ranked = _ranked(group, metric)
        best = ranked.iloc[0]
        where = "zero-shot" if shots == 0 else f"{shots}-shot"
        line = (f"At {where}, the best detector by mean {name} over the OOD sets is {best['method']} with "
                f"{best['score']} ({_pct(best['mean'], best['std'], best['n'])})")
        if len(ranked) > 1:
            second = ranked.iloc[1]
            line += (f"; runner-up {second['method']} with {second['score']} "
                     f"({_pct(second['mean'], second['std'], second['n'])}), {_verdict(best, second)}")
        lines.append(line + ".")
    a, b = pair
    focused = per_run[per_run["score"] == focus]
    for _, row in paired_comparison(focused, metric, a, b, metric).iterrows():
        lines.append(
            f"{focus}, {int(row['shots'])}-shot: {a} {_tidy(row[a] * 100):.1f} % vs {b} {_tidy(row[b] * 100):.1f} % "
            f"{name} (difference {_tidy(row['difference'] * 100):+.1f} points); {a} is better in {int(row['a_better'])} of "
            f"{int(row['seeds'])} seeds."
        )
    trained = detection[(detection["score"] == focus) & (detection["shots"] > 0)]
    if not trained.empty:
        top = trained["shots"].max()
        by_set = mean_std(trained[trained["shots"] == top], ["dataset", "method"], metric)
        wins = {d: _ranked(g, metric).iloc[0]["method"] for d, g in by_set.groupby("dataset")}
        counts = pd.Series(wins).value_counts()
        lines.append(f"Per OOD set with {focus}, {top}-shot: "
                     + "; ".join(f"{m} wins {n} ({', '.join(d for d, w in wins.items() if w == m)})"
                                 for m, n in counts.items()) + ".")
    return lines


def generalization_summary(accuracy: pd.DataFrame) -> list[str]:
    """Plain-language findings from an accuracy table (method, shots, seed, dataset, role, acc): per shots,
    the most accurate method on the ID test split and on the mean of the covariate-shifted sets."""
    per_run = accuracy.assign(group=accuracy["role"].map({"id": "ID test", "covariate": "covariate-shifted sets (mean)"}))
    per_run = per_run.groupby(["group", "method", "shots", "seed"], as_index=False)["acc"].mean()
    lines = []
    for (group, shots), rows in mean_std(per_run, ["group", "shots", "method"], "acc").groupby(["group", "shots"]):
        if shots == 0:
            continue
        ranked = _ranked(rows, "acc")
        best = ranked.iloc[0]
        line = f"{group}, {shots}-shot: {best['method']} is most accurate ({_pct(best['mean'], best['std'], best['n'])})"
        if len(ranked) > 1:
            second = ranked.iloc[1]
            line += f", {_verdict(best, second)} of {second['method']} ({_pct(second['mean'], second['std'], second['n'])})"
        lines.append(line + ".")
    return lines


def _skipped_summary(skipped: dict[str, int]) -> str:
    """'none', or each manifest with its count of unreadable files left out (listed in its sidecar)."""
    parts = [f"{n} from {manifest} (listed in {manifest}.json)" for manifest, n in sorted(skipped.items()) if n]
    return "; ".join(parts) or "none"


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
            ("images encoded", f"{prov['image_encoder_calls']} image-encoder calls for {prov['images']} images"
                               f" and {prov.get('augmented_views', 0)} augmented training views"),
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
