# deltaenergy: the ΔEnergy / EBM study as one DAG. Rules live in workflow/rules/; this file only
# names the default config, includes the rules and defines the target.
from snakemake.utils import min_version

min_version("9.0")


# The demo config unless the user passes --configfile (which then replaces it entirely: no silent
# merging of demo keys into a real benchmark's config).
if not workflow.config_settings.configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


# A config holding several studies (`studies:`) runs each as a module of this Snakefile with its own config
# and results/<benchmark>/<study>/ (workflow/rules/studies.smk); otherwise this is one study.
if "studies" in config:

    include: "workflow/rules/studies.smk"

else:

    include: "workflow/rules/common.smk"
    include: "workflow/rules/data.smk"
    include: "workflow/rules/features.smk"
    include: "workflow/rules/train.smk"
    include: "workflow/rules/scores.smk"
    include: "workflow/rules/diagnostics.smk"
    include: "workflow/rules/reports.smk"


rule all:
    input:
        TARGETS,
    default_target: True
