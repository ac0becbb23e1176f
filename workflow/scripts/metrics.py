"""Tidy detection and accuracy tables over every run, score and dataset (no aggregation)."""
from deltaenergy.evaluate import metrics_tables, read_score_tables
from deltaenergy.io import write_csv
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    scores = read_score_tables(snakemake.input)
    detection, accuracy = metrics_tables(scores, snakemake.params.scores)
    write_csv(snakemake.output.detection, detection)
    write_csv(snakemake.output.accuracy, accuracy)
    print(f"{len(detection)} detection rows, {len(accuracy)} accuracy rows")
