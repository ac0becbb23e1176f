"""Download an open_clip pretrained tag into open_clip's cache (network: a local rule) and record its file
and sha256; the backbone later loads it from the cache without network."""
from deltaenergy.backbones.openclip import fetch_pretrained
from deltaenergy.io import write_json
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    record = fetch_pretrained(snakemake.wildcards.arch, snakemake.wildcards.tag, snakemake.params.cache_dir)
    write_json(snakemake.output[0], record)
    print(f"{snakemake.wildcards.arch}/{snakemake.wildcards.tag}: {record['path']} sha256 {record['sha256']}")
