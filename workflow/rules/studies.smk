# A config holding several studies (hard_ood: two protocols; cross_dataset: dataset x held-out domain):
# each study is the whole workflow as a Snakemake module of the same Snakefile, with its validated config
# (the top-level keys with its `studies` entry merged in) and its own results/<benchmark>/<study>/.
# Rules are named <study>_<rule>; `snakemake <study>_all` runs one study. Downloads (fetch_*) write files
# shared by all studies (resources/): only the first study's module declares those rules, so each file has
# one producer.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from deltaenergy.config import ConfigError, study_configs  # noqa: E402

try:
    STUDY_CONFIGS = study_configs(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

TARGETS = []
for STUDY, STUDY_CONFIG in STUDY_CONFIGS.items():
    STUDY_RULES = f"{STUDY}_"

    module:
        name: STUDY
        snakefile:
            "../../Snakefile"
        config:
            STUDY_CONFIG

    if not TARGETS:

        use rule * from STUDY as STUDY_RULES*

    else:

        use rule * from STUDY exclude fetch_source, fetch_weights, fetch_dataset as STUDY_RULES*

    TARGETS += [f"results/{config['benchmark']}/{STUDY}/reports/index.html"]
