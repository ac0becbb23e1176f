"""Manifest of one real-benchmark dataset (registry data, protocol of data.protocol) + sidecar with class_subset."""
from deltaenergy.data.manifest import write_manifest, write_manifest_sidecar
from deltaenergy.data.real import build_real_dataset
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    name, on_bad_image = snakemake.wildcards.dataset, snakemake.params.on_bad_image
    manifest, extras = build_real_dataset(name, snakemake.params.data, on_bad_image)
    write_manifest(snakemake.output.manifest, manifest)
    write_manifest_sidecar(snakemake.output.manifest, manifest, on_bad_image, **extras)
    print(f"{name}: {len(manifest)} images, {len(manifest.attrs.get('skipped', []))} unreadable files skipped, "
          f"{len(extras['class_subset'])} ID classes")
