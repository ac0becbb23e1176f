"""Draw the few-shot training set (exactly `shots` images per class) for one seed."""
from deltaenergy.data.fewshot import fewshot_indices
from deltaenergy.data.manifest import read_manifest
from deltaenergy.io import write_csv
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    manifest = read_manifest(snakemake.input.manifest)
    picked = fewshot_indices(manifest, int(snakemake.wildcards.shots), int(snakemake.wildcards.seed))
    write_csv(snakemake.output[0], picked)
    print(f"{len(picked)} images")
