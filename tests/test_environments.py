"""environment.yml and workflow/envs/*.yaml agree with pyproject.toml package by package, and they provide
every import of the demo's scripts, library and notebooks (import names mapped to distributions with
importlib.metadata.packages_distributions; a distribution counts as provided when an environment pins
it or pins something that requires it)."""

import ast
import json
import re
import sys
import tomllib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


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
        missing = {m for m in needed if not distributions_of(m) & dist_closure(frozenset(provided))}
        assert not missing, f"workflow/envs/{env_name} lacks distributions for imports {sorted(missing)} (used by {sorted(files)})"


@lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    """Normalised names of the installed distributions providing top-level import ``module``."""
    dists = {norm(d) for d in _packages_distributions().get(module, [])}
    assert dists, f"import '{module}' maps to no installed distribution; install the project (make setup)"
    return dists


@lru_cache(maxsize=None)
def dist_closure(names: frozenset[str]) -> set[str]:
    """``names`` plus everything they require unconditionally (no extras), from installed metadata."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    return seen


def demo_sources() -> dict[str, tuple[str, str]]:
    """(code, package for relative imports) of the demo's scripts, library modules and notebooks (code
    cells), by relative path."""
    code = {}
    for path in sorted((ROOT / "workflow" / "scripts").glob("*.py")):
        code[str(path.relative_to(ROOT))] = (path.read_text(), "")
    for path in sorted((ROOT / "src").rglob("*.py")):
        code[str(path.relative_to(ROOT))] = (path.read_text(), ".".join(path.parent.relative_to(ROOT / "src").parts))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code[str(path.relative_to(ROOT))] = (text, "")
    return code


def _conda_names(path: Path) -> set[str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    return {norm(re.split(r"[=<>\s]", d)[0]) for d in deps if isinstance(d, str)}


ENV_SETS = {
    "environment.yml": [ROOT / "environment.yml"],
    "workflow/envs": sorted((ROOT / "workflow" / "envs").glob("*.yaml")),
}


@pytest.mark.parametrize("env_set", list(ENV_SETS))
def test_environments_provide_every_import_of_the_demo(env_set):
    provided = set()
    for path in ENV_SETS[env_set]:
        provided |= set(env_pins(path)) | _conda_names(path)
    available = dist_closure(frozenset(provided))
    users: dict[str, list[str]] = {}
    for rel, (code, package) in demo_sources().items():
        for module in third_party(imported_modules(code, package)):
            users.setdefault(module, []).append(rel)
    assert {"torch", "numpy", "pandas", "PIL", "IPython"} <= set(users)  # the scan sees scripts and notebooks
    missing = {m: files[:3] for m, files in users.items() if not distributions_of(m) & available}
    assert not missing, f"{env_set} provides no distribution for imports (used by): {missing}"
