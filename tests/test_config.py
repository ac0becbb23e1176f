"""The config schema: defaults filled, unknown keys and impossible combinations named."""

import copy
from pathlib import Path

import pytest
import yaml

from deltaenergy.config import ConfigError, ebm_grid_variants, load_config, validate_config

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
        (lambda c: c["data"].update(ood=["stamps_animals", "imagenet"]), "data.ood.1"),
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


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["diagnostics"]["hessian"].update(methods=["coop", "maple"]),
         "config key 'diagnostics.hessian.methods': method 'maple' was not trained"),
        (lambda c: c["ablations"]["c_sweep"].update(methods=["zeroshot", "prograd"]),
         "config key 'ablations.c_sweep.methods': method 'prograd' was not trained"),
        (lambda c: c["diagnostics"]["hessian"].update(domains=["fmnist_sketch", "digits"]),
         "config key 'diagnostics.hessian.domains': 'digits' is a semantic-OOD set and has no labels"),
        (lambda c: c["data"].update(covariate=["fmnist_sketch"]) or c["diagnostics"]["hessian"].update(
            domains=["fmnist_corrupt"]), "config key 'diagnostics.hessian.domains': ['fmnist_corrupt'] not in"),
        (lambda c: c["diagnostics"].update(shots=8), "config key 'diagnostics.shots': [8] not in fewshot.shots"),
        (lambda c: c["diagnostics"]["hessian"].update(seeds=[4]), "config key 'diagnostics.hessian.seeds'"),
        (lambda c: c["diagnostics"]["energy_change"].update(score="energy"),
         "config key 'diagnostics.energy_change.score': scores.energy is a energy score"),
        (lambda c: c["diagnostics"]["radar"].update(score="nope"), "config key 'diagnostics.radar.score': 'nope'"),
        (lambda c: c["ablations"]["c_sweep"].update(c=[1, 11]), "config key 'ablations.c_sweep.c': [11] exceed"),
        (lambda c: c["ablations"]["ebm_grid"].update(base="coop"), "methods.coop is of kind 'coop'"),
        (lambda c: c["ablations"]["ebm_grid"].update(seed=7), "config key 'ablations.ebm_grid.seed'"),
        (lambda c: c["fewshot"].update(method_shots={"maple": [16]}),
         "config key 'fewshot.method_shots': method 'maple' was not trained"),
        (lambda c: c["fewshot"].update(method_shots={"cocoop": [8, 16]}),
         "config key 'fewshot.method_shots.cocoop': [8] not in fewshot.shots"),
        (lambda c: c["fewshot"].update(method_shots={"cocoop": [4]}),
         "config key 'fewshot.method_shots.cocoop': [4] lacks [16], needed by the diagnostics"),
        (lambda c: c["diagnostics"].update(shots=4) or c["ablations"]["ebm_grid"].update(shots=16)
         or c["fewshot"].update(method_shots={"coop": [4]}), "'fewshot.method_shots.coop': [4] lacks [16]"),
        (lambda c: c["fewshot"].update(method_seeds={"cocoop": [7]}),
         "config key 'fewshot.method_seeds.cocoop': [7] not in fewshot.seeds"),
        (lambda c: c["fewshot"].update(method_seeds={"cocoop": [2]}),
         "config key 'fewshot.method_seeds.cocoop': [2] lacks [1], needed by"),  # the EBM grid's seed
        (lambda c: c["fewshot"].update(method_seeds={"coop": [1]}),
         "config key 'fewshot.method_seeds.coop': [1] lacks [2, 3], needed by"),  # the Hessian's seeds
    ],
)
def test_diagnostics_requests_are_checked(demo, edit, message):
    edit(demo)
    with pytest.raises(ConfigError) as err:
        validate_config(demo)
    assert message in str(err.value)


def test_diagnostics_nulls_resolve_to_the_study(demo):
    cfg = validate_config(demo)
    diag, abl = cfg["diagnostics"], cfg["ablations"]
    assert diag["shots"] == max(demo["fewshot"]["shots"]) == abl["ebm_grid"]["shots"]
    assert diag["hessian"]["seeds"] == demo["fewshot"]["seeds"]
    assert diag["hessian"]["domains"] == demo["data"]["covariate"]
    assert abl["c_sweep"]["methods"] == ["zeroshot", *demo["methods"]]
    del demo["diagnostics"], demo["ablations"]
    bare = validate_config(demo)
    # null = every trained method except the image-conditioned CoCoOp (see schema.yaml)
    assert bare["diagnostics"]["hessian"]["methods"] == [m for m, spec in demo["methods"].items() if spec["kind"] != "cocoop"]
    assert "cocoop" in demo["methods"] and bare["ablations"]["ebm_grid"] is None
    assert ebm_grid_variants(bare) == {}


@pytest.mark.parametrize("key, axis, listed", [("method_shots", "shots", [16]), ("method_seeds", "seeds", [1])])
def test_method_grid_filled_for_every_trained_method(demo, key, axis, listed):
    demo["fewshot"][key] = {"cocoop": listed}
    assert demo["fewshot"][axis] == ([1, 4, 16] if axis == "shots" else [1, 2, 3])
    assert validate_config(demo)["fewshot"][key] == {"coop": demo["fewshot"][axis], "ebm": demo["fewshot"][axis],
                                                     "locoop": demo["fewshot"][axis], "cocoop": listed}
    del demo["fewshot"][key]
    assert all(values == demo["fewshot"][axis] for values in validate_config(demo)["fewshot"][key].values())


def test_ebm_grid_variants_change_only_the_grid_keys(demo):
    demo["ablations"]["ebm_grid"].update(**{"lambda": [0.5, 2.0], "mask_mode": ["keep_negative"], "anchor": ["label"]})
    variants = ebm_grid_variants(validate_config(demo))
    base = validate_config(demo)["methods"]["ebm"]
    assert list(variants) == ["ebm_lam0.5_keep_negative_label", "ebm_lam2_keep_negative_label"]
    for spec, lam in zip(variants.values(), [0.5, 2.0]):
        assert spec == {**base, "lambda": lam, "mask_mode": "keep_negative", "anchor": "label"}


def test_image_conditioned_kinds_are_the_conditional_training_methods():
    from deltaenergy.config import IMAGE_CONDITIONED_KINDS
    from deltaenergy.methods.train import METHODS

    assert set(IMAGE_CONDITIONED_KINDS) == {kind for kind, spec in METHODS.items() if spec.conditional}
