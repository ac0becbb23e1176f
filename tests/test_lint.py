"""The workflow passes Snakemake's linter and is formatted by snakefmt (settings: [tool.snakefmt] in
pyproject.toml). Both only parse the Snakefile and its includes with the demo config: seconds."""

import subprocess
import sys

from conftest import ROOT, SNAKEMAKE


def test_snakemake_lint_is_clean(tmp_path):
    # Working directory tmp_path: linting writes .snakemake/ there, not into the checkout.
    proc = subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--lint"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, f"snakemake --lint reports:\n{out}"
    assert "Congratulations, your workflow is in a good condition!" in out, out


def test_workflow_is_snakefmt_formatted():
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    # --config: snakefmt would otherwise look for pyproject.toml in the current directory only.
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--config", str(ROOT / "pyproject.toml"),
                           *map(str, files)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"snakefmt would reformat (run `snakefmt Snakefile workflow/rules`):\n"
                                  f"{proc.stdout}{proc.stderr}")
    assert f"All {len(files)} file(s) would be left unchanged" in proc.stderr, proc.stderr
