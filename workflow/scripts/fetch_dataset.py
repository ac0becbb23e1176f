"""Download, verify, extract and validate one real dataset (a local rule: runs where there is internet)."""
import json

from deltaenergy.data.real import fetch_dataset
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    record = fetch_dataset(snakemake.wildcards.name, archive=snakemake.params.archive,
                           counts=snakemake.params.counts)
    print(json.dumps(record, indent=2))
