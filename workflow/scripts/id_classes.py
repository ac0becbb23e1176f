"""The ID class list of a real benchmark: {"names": [...], "ids": [...]} in label order."""
from deltaenergy.data.real import id_classes
from deltaenergy.io import write_json
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    ids, names = id_classes(snakemake.params.data)
    write_json(snakemake.output[0], {"names": names, "ids": ids})
    print(f"{len(ids)} ID classes")
