"""Record what produced the results: config hash, git commit, versions, device, seeds, input checksums,
and the unreadable source images each dataset left out."""
from deltaenergy.io import write_json
from deltaenergy.logs import log_to
from deltaenergy.provenance import collect_provenance

with log_to(snakemake.log[0]):
    inputs = snakemake.input
    write_json(snakemake.output[0], collect_provenance(snakemake.config, inputs.manifests, inputs.features, inputs.data,
                                                      inputs.sidecars, inputs.classes[0] if inputs.classes else None))
