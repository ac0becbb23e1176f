"""The config schema: defaults filled, unknown keys and impossible combinations named."""

import copy
from pathlib import Path

import pytest
import yaml

from deltaenergy.config import ConfigError, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_demo_config_is_valid_and_defaults_are_filled(demo):
    del demo["train"]["momentum"], demo["methods"]["ebm"]["anchor"]
    cfg = validate_config(demo)
    assert cfg["train"]["momentum"] == 0.9
    assert cfg["methods"]["ebm"]["anchor"] == "predicted"
    assert cfg["features"]["batch_size"] == 128


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["train"].update(lr_typo=0.1), "train"),
        (lambda c: c["methods"]["ebm"].update(lamda=2.0), "methods.ebm"),
        (lambda c: c["methods"].update(x={"kind": "nope"}), "methods.x.kind"),
        (lambda c: c["data"].update(ood=["animal_mnist", "imagenet"]), "data.ood.1"),
        (lambda c: c["train"].update(lr=-1), "train.lr"),
        (lambda c: c.update(extra=1), "<top level>"),
        (lambda c: c["methods"]["coop"].update(train={"lr": 0}), "methods.coop.train.lr"),
        (lambda c: c["methods"]["coop"].update(train={"epoch": 5}), "methods.coop.train"),
        (lambda c: c["methods"]["coop"].update(train=5), "methods.coop.train"),
    ],
)
def test_schema_errors_name_the_key(demo, edit, key):
    edit(demo)
    with pytest.raises(ConfigError) as err:
        validate_config(demo)
    assert f"config key '{key}'" in str(err.value)


def test_impossible_combinations(demo):
    bad = copy.deepcopy(demo)
    bad["fewshot"]["shots"] = [1, 100]
    with pytest.raises(ConfigError, match="fewshot.shots"):
        validate_config(bad)
    bad = copy.deepcopy(demo)
    bad["scores"]["delta_energy"]["c"] = 11
    with pytest.raises(ConfigError, match=r"scores.delta_energy.c"):
        validate_config(bad)


def test_load_config_names_the_file(tmp_path, demo):
    demo["benchmark"] = "bad name!"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(demo))
    with pytest.raises(ConfigError, match=r"(?s)cfg.yaml.*config key .benchmark."):
        load_config(path)
