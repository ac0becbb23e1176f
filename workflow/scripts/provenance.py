"""Record what produced the results: config hash, git commit, versions, device, seeds, input checksums."""
from deltaenergy.io import write_json
from deltaenergy.logs import log_to
from deltaenergy.provenance import collect_provenance

with log_to(snakemake.log[0]):
    write_json(snakemake.output[0], collect_provenance(snakemake.config, snakemake.input.manifests, snakemake.input.features,
                                                          snakemake.input.data))
