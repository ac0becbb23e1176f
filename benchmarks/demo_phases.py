"""Demo study time by phase, from Snakemake's ``benchmark:`` files (results/demo/benchmarks).

Usage: python benchmarks/demo_phases.py [results/demo/benchmarks]

A phase is a rule: the first folder under the benchmarks folder (``extract_features/clipart.tsv``) or
the file's stem (``metrics.tsv``). Per phase: jobs, summed job wall seconds (``s``), summed CPU seconds
(``cpu_time``), largest ``max_rss`` (MB) and the span from the earliest job start to the latest job end
(each file's modification time is its job's end; start = end - s), which, unlike the sum, counts jobs
that ran in parallel once. Works on whatever files are there (a partial or running study included).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "results" / "demo" / "benchmarks"


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:  # Snakemake writes "-" or "NA" for what it could not measure
        return 0.0


def demo_phases(folder: str | Path = BENCHMARKS) -> dict:
    """``{"phases": [...], "total": {...}}`` aggregated from every ``*.tsv`` under ``folder`` (empty when
    the folder does not exist); the total's span is the study's wall time from first start to last end."""
    folder = Path(folder)
    jobs: dict[str, list[dict]] = {}
    for path in sorted(folder.rglob("*.tsv")) if folder.is_dir() else []:
        rel = path.relative_to(folder)
        phase = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        row = rows[-1]  # a rule with ``repeat`` writes one line per run; the last is the latest
        wall, end = _number(row.get("s", "0")), path.stat().st_mtime
        jobs.setdefault(phase, []).append({"s": wall, "cpu_s": _number(row.get("cpu_time", "0")),
                                           "max_rss_mb": _number(row.get("max_rss", "0")), "start": end - wall,
                                           "end": end})

    def summary(items: list[dict]) -> dict:
        return {"jobs": len(items), "sum_s": sum(j["s"] for j in items), "cpu_s": sum(j["cpu_s"] for j in items),
                "max_rss_mb": max(j["max_rss_mb"] for j in items),
                "span_s": max(j["end"] for j in items) - min(j["start"] for j in items)}

    phases = [{"phase": name, **summary(items)} for name, items in jobs.items()]
    phases.sort(key=lambda p: -p["sum_s"])
    every = [j for items in jobs.values() for j in items]
    return {"folder": folder.name, "phases": phases, "total": summary(every) if every else None}


def table(result: dict) -> str:
    if not result["total"]:
        return "No Snakemake benchmark files yet (run the demo first: make demo)."
    lines = ["| phase | jobs | job wall s (sum) | span s | CPU s | max RSS MB |", "|---|---:|---:|---:|---:|---:|"]
    for p in [*result["phases"], {"phase": "**all**", **result["total"]}]:
        lines.append(f"| {p['phase']} | {p['jobs']} | {p['sum_s']:.1f} | {p['span_s']:.1f} | {p['cpu_s']:.1f} | "
                     f"{p['max_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=BENCHMARKS)
    result = demo_phases(parser.parse_args(argv).folder)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
