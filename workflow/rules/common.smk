# Shared definitions: validated config, result paths, the study's grid.
# Rules pass the config slices they depend on as `params`, so changing one re-runs exactly the jobs it
# affects (Snakemake's params rerun trigger); scripts read their settings from snakemake.params.
import json
import os
import shutil
import sys
from pathlib import Path

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
# Jobs (scripts, papermill kernels, cluster jobs) import the library from this checkout; shell rules
# (papermill, nbconvert) use the interpreter running Snakemake unless a conda env (--use-conda) puts its
# own first on PATH. The workflow sets both rather than declaring them with `envvars:`, which would demand
# them from the user and copy the submitting host's values into remote jobs: every Snakemake process,
# a cluster job's included, runs this file and prefixes its own.
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p),
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
)

from deltaenergy.config import IMAGE_CONDITIONED_KINDS, validate_config, ConfigError  # noqa: E402
from deltaenergy.data.classes import class_subset, id_class_names  # noqa: E402
from deltaenergy.data.sources import DATASET_SOURCES, FETCHED_DATA_ENV, SOURCES, system_available  # noqa: E402

try:
    _validated = validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_validated)

# One study of a config holding several (studies.smk) files its outputs under results/<benchmark>/<study>/.
R = Path("results", config["benchmark"], *([config["study"]] if "study" in config else [])).as_posix()
BACKBONE = config["backbone"]["name"]
ID_DATASET = config["data"]["id"]
# The prompts' class names in label order: the demo's static list, or the registry protocol's ID classes.
ID_CLASSNAMES = id_class_names(config["data"])
DATASETS = [ID_DATASET, *config["data"]["covariate"], *config["data"]["ood"]]
# Sets classified among their own classes too (ImageNet-A/R: <set> and <set>@all in accuracy.csv).
CLASS_SUBSETS = {d: subset for d in DATASETS if (subset := class_subset(d, config["data"])) is not None}
SHOTS = config["fewshot"]["shots"]
ZEROSHOT_METHODS = ["zeroshot", "zeroshot_ensemble"]
TRAINED_METHODS = list(config["methods"])
# Zero-shot runs have no shots and no seed: they are filed as shots0_seed0.
# Every trained method's shot counts and seeds (filled by the validation: fewshot.method_shots, method_seeds).
METHOD_SHOTS = config["fewshot"]["method_shots"]
METHOD_SEEDS = config["fewshot"]["method_seeds"]
RUNS = [(m, 0, 0) for m in ZEROSHOT_METHODS] + [
    (m, k, s) for m in TRAINED_METHODS for k in METHOD_SHOTS[m] for s in METHOD_SEEDS[m]
]


def run_dir(kind, method, shots, seed):
    return f"{R}/{kind}/{method}/shots{shots}_seed{seed}"


def dataset_sizes(dataset):
    """The `data.sizes` entry of a demo dataset: its own for the ID set, its role's otherwise."""
    sizes = config["data"]["sizes"]
    if dataset == ID_DATASET:
        return sizes[dataset]
    return sizes["covariate" if dataset in config["data"]["covariate"] else "ood"]


# Data sources whose registry package is missing are downloaded (rule fetch_source) into FETCHED, shared
# by all benchmarks; jobs find them through the environment.
FETCHED = "resources/downloads"
os.environ[FETCHED_DATA_ENV] = str(Path(FETCHED).resolve())


def source_markers(keys):
    """Completion markers of the data sources in `keys` whose registry package is not installed."""
    return [f"{FETCHED}/{key}.complete" for key in keys if not system_available(key)]


def prompt_input(w):
    """The trained prompt a score_run job scores with; zero-shot methods have none."""
    if w.method in ZEROSHOT_METHODS:
        return []
    return f"{run_dir('train', w.method, w.shots, w.seed)}/prompt.pt"


# The open_clip tag's download record (rule fetch_weights), an input of every job that builds the backbone;
# none for a local checkpoint or the stand-in.
_OPTIONS = config["backbone"]["options"]
WEIGHTS = (
    [f"resources/weights/{_OPTIONS['arch']}/{_OPTIONS['pretrained']}.json"]
    if config["backbone"]["name"] == "openclip" and _OPTIONS.get("pretrained")
    else []
)


def dataset_dirs(datasets):
    """The image folders the demo builds under results/ (registry datasets are read where they lie: none)."""
    return [f"{R}/data/{d}" for d in datasets] if config["data"]["kind"] == "demo" else []


# The registry protocol's ID class list (rule id_classes), recorded in provenance.json.
CLASSES_JSON = [f"{R}/manifests/classes.json"] if config["data"]["kind"] == "registry" else []


def features_path(dataset):
    return f"{R}/features/{BACKBONE}/{dataset}.npz"


# Cached augmented views of the ID training images (features.views > 0), encoded once for every method.
VIEWS_PATH = f"{R}/features/{BACKBONE}/views/{ID_DATASET}.npz"
VIEWS = [VIEWS_PATH] if config["features"]["views"] else []


# Diagnostic report rules (diagnostics.smk): score tables of runs, figures and HTML for `snakemake --report`,
# papermill parameters.
def score_paths(runs, datasets=DATASETS, root="scores"):
    return [f"{R}/{root}/{m}/shots{k}_seed{s}/{d}.parquet" for m, k, s in runs for d in datasets]


def figure(name, figure_number):
    """A report figure, registered for `snakemake --report` under "Figures"."""
    return report(
        f"{R}/reports/figures/{name}.png", category="Figures", labels={"figure": figure_number, "report": name}
    )


def notebook_html(name):
    return report(f"{R}/reports/{name}.html", category="Reports", labels={"report": name})


def nb_params(output, **kw):
    """papermill parameters (JSON) of a diagnostic report: its results directory and figure, taken from
    the rule's output (`{results}/reports/<name>.html`, `output.figure`) rather than hardcoded."""
    return json.dumps({"results_dir": str(Path(output.html).parents[1]), "figure": output.figure, **kw})


# A report notebook: executed with its papermill parameters (JSON) and rendered to HTML without its code,
# in one process (deltaenergy.notebooks).
NOTEBOOK_SHELL = (
    "python -m deltaenergy.notebooks {input.notebook:q} {output.notebook:q} {output.html:q} {params.nb:q}"
    " > {log:q} 2>&1"
)


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(ZEROSHOT_METHODS + TRAINED_METHODS),
    shots=r"\d+",
    seed=r"\d+",


# Scheduling order among ready jobs (Snakemake's `priority`, higher first). Data jobs (datasets, features,
# NegLabel's labels) gate every scoring job: first. Then an image-conditioned method's training and scoring
# (CoCoOp: its per-image prompts make its train -> score chain the study's longest, ~100 + ~130 s in the
# demo against ~25 s for CoOp's); the other jobs fill the remaining cores around it.
DATA_PRIORITY = 2


def chain_priority(wildcards):
    return int(config["methods"].get(wildcards.method, {}).get("kind") in IMAGE_CONDITIONED_KINDS)


def gpu_request(wildcards):
    """The `gpu` resource of the GPU-capable rules: 1 where there is a GPU to take, else 0.

    Cluster executors give each job its own (profiles/slurm: sbatch --gpus=1). Locally a job takes one
    of the `gpu` slots of profiles/default (one job per GPU) when the machine has an NVIDIA driver
    (nvidia-smi); without one the jobs run on CPU and only --cores limits them. A function: the executor
    is known per job.
    """
    return 1 if workflow.non_local_exec or shutil.which("nvidia-smi") else 0
