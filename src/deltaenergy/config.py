"""Load and validate a study config against ``config/schema.yaml``, filling in the schema's defaults.

Every error names the offending key as a dotted path (``config key 'train.lr': ...``) so a user can find
it in their YAML file. Checks that need more than one key (``c`` larger than the number of classes, more
shots than the smallest class has) live in :func:`check_consistency`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# Untrained runs, filed as shots0_seed0 (the workflow's zero-shot methods).
ZEROSHOT_METHODS = ("zeroshot", "zeroshot_ensemble")
# Method kinds whose prompts depend on the image (methods.train.METHODS' `conditional`; named here so the
# config and the Snakefile stay free of torch): the Hessian skips them by default, the scheduler runs their
# long train -> score chains first.
IMAGE_CONDITIONED_KINDS = ("cocoop",)
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A config that does not describe a valid study; the message names the key and the fix."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _fill_defaults(schema: dict, value: Any) -> None:
    """Insert ``default`` values of absent properties, recursively (also in matching if/then branches)."""
    if not isinstance(value, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if name not in value and "default" in sub:
            value[name] = copy.deepcopy(sub["default"])
        if name in value:
            _fill_defaults(sub, value[name])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for name in set(value) - set(schema.get("properties", {})):
            _fill_defaults(extra, value[name])
    for branch in schema.get("allOf", []):
        if "if" in branch and jsonschema.Draft7Validator(branch["if"]).is_valid(value):
            _fill_defaults(branch.get("then", {}), value)


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Return a validated copy of ``config`` with defaults filled in; raise :class:`ConfigError`."""
    schema = load_schema() if schema is None else schema
    config = copy.deepcopy(config)
    validator = jsonschema.Draft7Validator(schema)
    _raise_schema_errors(validator.iter_errors(config))
    _fill_defaults(schema, config)
    check_method_train(config, schema)
    check_consistency(config)
    resolve_diagnostics(config)
    resolve_method_grid(config)
    return config


def check_method_train(config: dict, schema: dict) -> None:
    """Validate each ``methods.<m>.train`` override merged into ``train`` against ``train``'s schema."""
    validator = jsonschema.Draft7Validator(schema["properties"]["train"])
    for name, spec in config["methods"].items():
        _raise_schema_errors(validator.iter_errors({**config["train"], **spec.get("train", {})}),
                             prefix=("methods", name, "train"))


def _message(error: jsonschema.ValidationError) -> str:
    """The schema's description for a key forbidden by ``not: {}`` (whose own message says nothing useful)."""
    if error.validator == "not" and error.validator_value == {}:
        return error.schema.get("description", "not allowed here")
    return error.message


def _raise_schema_errors(errors, prefix: tuple = ()) -> None:
    """Raise one :class:`ConfigError` listing every schema error by its dotted key (under ``prefix``)."""
    errors = sorted(errors, key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        lines = [f"config key '{_key((*prefix, *e.absolute_path))}': {_message(e)}" for e in errors]
        raise ConfigError("invalid config (fix these keys, see config/schema.yaml):\n  " + "\n  ".join(lines))


def check_consistency(config: dict) -> None:
    """Cross-key checks the schema cannot express (kept free of torch imports: Snakemake runs this)."""
    from .data.classes import id_class_names

    n_classes = len(id_class_names(config["data"]))
    data = config["data"]
    pool_key = f"data.sizes.{data['id']}.train_per_class"
    if data["kind"] == "demo":
        pool = data["sizes"][data["id"]]["train_per_class"]
    else:  # the registry's default pool (deltaenergy.data.real.build_real_dataset) unless data.sizes sets one
        pool = data["sizes"].get(data["id"], {}).get("train_per_class", 16)
    too_many = [s for s in config["fewshot"]["shots"] if s > pool]
    if too_many:
        raise ConfigError(
            f"config key 'fewshot.shots': {too_many} exceed the per-class training pool "
            f"({pool_key} = {pool}); lower the shots or raise the pool"
        )
    for name, spec in config["methods"].items():
        if spec["kind"] == "locoop" and not spec["top_k"] < n_classes:
            raise ConfigError(
                f"config key 'methods.{name}.top_k': {spec['top_k']} must be below the number of ID classes "
                f"({n_classes}); the paper's 200 is for ImageNet-1k"
            )
    for column, spec in config["scores"].items():
        if "c" in spec and not 1 <= spec["c"] <= n_classes:
            raise ConfigError(
                f"config key 'scores.{column}.c': c = {spec['c']} must be between 1 and the number "
                f"of ID classes ({n_classes})"
            )
    check_diagnostics(config, n_classes)


def _check_methods(key: str, names: list[str] | None, config: dict, zeroshot: bool = False) -> None:
    """Every name must be a trained method (a key of ``methods``), or zero-shot where ``zeroshot``."""
    allowed = [*(ZEROSHOT_METHODS if zeroshot else ()), *config["methods"]]
    for name in names or []:
        if name not in allowed:
            raise ConfigError(
                f"config key '{key}': method {name!r} was not trained: it is not a key of 'methods' "
                f"(available: {', '.join(allowed)}); add it to 'methods' or remove it from '{key}'"
            )


def _check_member(key: str, values, allowed: list, what: str) -> None:
    bad = [v for v in (values if isinstance(values, list) else [values]) if v is not None and v not in allowed]
    if bad:
        raise ConfigError(f"config key '{key}': {bad} not in {what} {allowed}; use one of those")


def check_diagnostics(config: dict, n_classes: int) -> None:
    """Cross-key checks of ``diagnostics`` and ``ablations``: methods trained, datasets labelled, shots and
    seeds of the study, score columns of the right kind (``n_classes``: the number of ID classes)."""
    diag, abl, data, scores = config["diagnostics"], config["ablations"], config["data"], config["scores"]
    shots, seeds = config["fewshot"]["shots"], config["fewshot"]["seeds"]
    _check_member("diagnostics.shots", diag["shots"], shots, "fewshot.shots")
    hess = diag["hessian"]
    _check_methods("diagnostics.hessian.methods", hess["methods"], config)
    _check_member("diagnostics.hessian.seeds", hess["seeds"], seeds, "fewshot.seeds")
    for name in hess["domains"] or []:
        if name in data["ood"]:
            raise ConfigError(
                f"config key 'diagnostics.hessian.domains': {name!r} is a semantic-OOD set and has no labels "
                f"(label -1), so its cross-entropy Hessian is undefined; use labelled sets: {data['covariate']}"
            )
        _check_member("diagnostics.hessian.domains", name, data["covariate"], "the covariate sets of data.covariate")
    for key, column, kind in [("diagnostics.energy_change.score", diag["energy_change"]["score"], "delta_energy"),
                              ("ablations.c_sweep.score", abl["c_sweep"]["score"], "delta_energy"),
                              ("diagnostics.radar.score", diag["radar"]["score"], None)]:
        if column not in scores:
            raise ConfigError(f"config key '{key}': {column!r} is not a column of 'scores' ({', '.join(scores)})")
        if kind and scores[column]["score"] != kind:
            raise ConfigError(f"config key '{key}': scores.{column} is a {scores[column]['score']} score; "
                              f"name a column whose score is {kind}")
    _check_methods("ablations.c_sweep.methods", abl["c_sweep"]["methods"], config, zeroshot=True)
    too_big = [c for c in abl["c_sweep"]["c"] if c > n_classes]
    if too_big:
        raise ConfigError(f"config key 'ablations.c_sweep.c': {too_big} exceed the number of ID classes ({n_classes})")
    grid = abl["ebm_grid"]
    if grid is not None:
        base = grid["base"]
        _check_methods("ablations.ebm_grid.base", [base], config)
        if config["methods"][base]["kind"] != "ebm":
            raise ConfigError(f"config key 'ablations.ebm_grid.base': methods.{base} is of kind "
                              f"{config['methods'][base]['kind']!r}; the grid varies an ebm method")
        _check_member("ablations.ebm_grid.shots", grid["shots"], shots, "fewshot.shots")
        _check_member("ablations.ebm_grid.seed", grid["seed"], seeds, "fewshot.seeds")


def resolve_diagnostics(config: dict) -> None:
    """Replace the ``null`` (= "all" / "largest") entries of ``diagnostics`` and ``ablations`` by values."""
    diag, abl = config["diagnostics"], config["ablations"]
    if diag["shots"] is None:
        diag["shots"] = max(config["fewshot"]["shots"])
    hess = diag["hessian"]
    if hess["methods"] is None:  # all but the image-conditioned (CoCoOp): see schema.yaml
        hess["methods"] = [name for name, spec in config["methods"].items()
                           if spec["kind"] not in IMAGE_CONDITIONED_KINDS]
    hess["seeds"] = list(config["fewshot"]["seeds"]) if hess["seeds"] is None else hess["seeds"]
    hess["domains"] = list(config["data"]["covariate"]) if hess["domains"] is None else hess["domains"]
    sweep = abl["c_sweep"]
    sweep["methods"] = ["zeroshot", *config["methods"]] if sweep["methods"] is None else sweep["methods"]
    if abl["ebm_grid"] is not None and abl["ebm_grid"]["shots"] is None:
        abl["ebm_grid"]["shots"] = diag["shots"]


def resolve_method_grid(config: dict) -> None:
    """Fill ``fewshot.method_shots`` and ``fewshot.method_seeds`` for every trained method (default: all of
    ``fewshot.shots`` / ``fewshot.seeds``), after checking each listed one: a trained method, a subset of
    the study's values holding those the diagnostics and the EBM grid need (they show every trained
    method: the diagnostics' shot count, the EBM grid's shot count and seed, the Hessian's seeds for the
    methods it compares)."""
    fewshot, methods, diag = config["fewshot"], config["methods"], config["diagnostics"]
    grid = config["ablations"]["ebm_grid"] or {}

    def needed(axis: str, name: str) -> set:
        if axis == "shots":
            return {diag["shots"], *([grid["shots"]] if grid else [])}
        hessian = diag["hessian"]["seeds"] if name in diag["hessian"]["methods"] else []
        return {*([grid["seed"]] if grid else []), *hessian}

    for axis in ("shots", "seeds"):
        key = f"method_{axis}"
        _check_methods(f"fewshot.{key}", list(fewshot[key]), config)
        for name, values in fewshot[key].items():
            _check_member(f"fewshot.{key}.{name}", values, fewshot[axis], f"fewshot.{axis}")
            missing = sorted(needed(axis, name) - set(values))
            if missing:
                raise ConfigError(f"config key 'fewshot.{key}.{name}': {values} lacks {missing}, needed by the "
                                  f"diagnostics / EBM grid / Hessian (which show this method); add it")
        fewshot[key] = {name: list(fewshot[key].get(name, fewshot[axis])) for name in methods}


def ebm_grid_variants(config: dict) -> dict[str, dict]:
    """``{variant name: methods entry}`` of the EBM ablation grid (empty without one); names read
    ``<base>_lam<λ>_<mask_mode>_<anchor>``."""
    grid = config["ablations"]["ebm_grid"]
    if grid is None:
        return {}
    base = config["methods"][grid["base"]]
    return {
        f"{grid['base']}_lam{lam:g}_{mode}_{anchor}": {**base, "lambda": lam, "mask_mode": mode, "anchor": anchor}
        for lam in grid["lambda"] for mode in grid["mask_mode"] for anchor in grid["anchor"]
    }


def _merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in: mappings key by key, recursively; any other value replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else copy.deepcopy(value)
    return merged


def study_configs(config: dict) -> dict[str, dict]:
    """``{study: validated config}`` of a config holding ``studies``: the top-level keys with each study's
    entry merged in (mappings key by key, other values replaced), ``study`` set to its name, ``studies``
    dropped. Errors name the study."""
    base = {key: value for key, value in config.items() if key != "studies"}
    studies = {}
    for name, override in config["studies"].items():
        study = _merge(base, {**override, "study": name})
        try:
            studies[name] = validate_config(study)
        except ConfigError as err:
            raise ConfigError(f"study '{name}' (config key 'studies.{name}' over the top-level keys): {err}") from None
    return studies


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it (the error names the file too)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    try:
        return validate_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
