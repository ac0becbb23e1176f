"""The Snakemake profiles as Snakemake composes them: `--profile profiles/slurm` also applies the workflow
profile profiles/default, whose values win; the SLURM profile must not rely on a key that is overridden."""

import os
from pathlib import Path

import yaml
from snakemake.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"


def load(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def parsed(*argv: str):
    cwd = os.getcwd()
    os.chdir(ROOT)  # where users run Snakemake; profiles/default is found next to the Snakefile
    try:
        return parse_args(["-s", str(ROOT / "Snakefile"), *argv])[1]
    finally:
        os.chdir(cwd)


def test_slurm_profile_sets_no_key_of_the_workflow_profile():
    shared = set(load("slurm")) & set(load("default"))
    assert not shared, f"profiles/default overrides these keys of profiles/slurm: {sorted(shared)}"


def test_workstation_settings():
    args = parsed()
    assert args.cores == os.cpu_count() and args.rerun_incomplete and not args.keep_going
    assert args.resources["gpu"].value == 1 and args.latency_wait == 10 and args.executor is None
    assert args.scheduler == "greedy"


def test_slurm_settings_as_snakemake_composes_them():
    args = parsed("--profile", str(PROFILES / "slurm"))
    assert args.executor == "slurm" and args.jobs == 100
    # The workstation's gpu limit stays, but counts per SLURM job, not across them.
    assert args.resources["gpu"].value == 1 and args.set_resource_scopes == {"gpu": "local"}
    assert args.rerun_incomplete and args.latency_wait == 10
    extra = [a for a in vars(args) if a.startswith("slurm_")]
    assert {"slurm_logdir", "slurm_keep_successful_logs"} <= set(extra)
    assert str(args.slurm_logdir) == "logs/slurm" and args.slurm_keep_successful_logs is True
    # The command line still wins over both profiles.
    assert parsed("--profile", str(PROFILES / "slurm"), "--latency-wait", "60").latency_wait == 60
