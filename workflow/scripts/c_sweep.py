"""ΔEnergy c sweep (scores only): the per-run sweeps that score_run wrote from its similarities, as one
table with method, shots and seed."""
import pandas as pd

from deltaenergy.io import write_csv
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    frames = []
    for (method, shots, seed), path in zip(snakemake.params.runs, snakemake.input.sweeps):
        frame = pd.read_csv(path)
        frame.insert(0, "method", method)
        frame.insert(1, "shots", shots)
        frame.insert(2, "seed", seed)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    write_csv(snakemake.output[0], out)
    print(f"{len(out)} rows from {len(frames)} runs")
