"""Write the report index page: every report with its caption, and the run's provenance."""
import json

from deltaenergy.logs import log_to
from deltaenergy.report import write_index

with log_to(snakemake.log[0]):
    provenance = json.loads(open(snakemake.input.provenance).read())
    write_index(snakemake.output[0], snakemake.params.captions, provenance, snakemake.params.figures)
