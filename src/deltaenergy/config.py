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
    return config


def check_method_train(config: dict, schema: dict) -> None:
    """Validate each ``methods.<m>.train`` override merged into ``train`` against ``train``'s schema."""
    validator = jsonschema.Draft7Validator(schema["properties"]["train"])
    for name, spec in config["methods"].items():
        _raise_schema_errors(validator.iter_errors({**config["train"], **spec.get("train", {})}),
                             prefix=("methods", name, "train"))


def _raise_schema_errors(errors, prefix: tuple = ()) -> None:
    """Raise one :class:`ConfigError` listing every schema error by its dotted key (under ``prefix``)."""
    errors = sorted(errors, key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        lines = [f"config key '{_key((*prefix, *e.absolute_path))}': {e.message}" for e in errors]
        raise ConfigError("invalid config (fix these keys, see config/schema.yaml):\n  " + "\n  ".join(lines))


def check_consistency(config: dict) -> None:
    """Cross-key checks the schema cannot express (kept free of torch imports: Snakemake runs this)."""
    from .data.classes import ID_CLASSES

    n_classes = len(ID_CLASSES[config["data"]["id"]])
    pool = config["data"]["sizes"]["fashion_mnist"]["train_per_class"]
    too_many = [s for s in config["fewshot"]["shots"] if s > pool]
    if too_many:
        raise ConfigError(
            f"config key 'fewshot.shots': {too_many} exceed the per-class training pool "
            f"(data.sizes.fashion_mnist.train_per_class = {pool}); lower the shots or raise the pool"
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
