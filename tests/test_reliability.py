"""Reliability and security (issue #9): what a user gets when configs, data, models, jobs or numbers go wrong.

Tested here, by fault:
- Config: wrong types, unknown keys and impossible combinations (c > K, more shots than the smallest
  class) name the dotted key, also when Snakemake builds the DAG.
- Data: every image mode converted to RGB as a NumPy reference does; truncated/unreadable files and
  decompression bombs refused naming the file; ``data.on_bad_image`` skip (counted in the manifest's
  sidecar, provenance and report index) or stop; class-folder datasets with a missing, empty or unknown
  class folder refused naming it.
- Models: prompt files of the wrong shape, kind or content refused naming the file; every ``torch.load``
  is ``weights_only=True``; nothing unpickles outside the NumPy-only unpickler of an installed package;
  no config value reaches a shell unquoted.
- Faults: a full disk (ENOSPC on write or on fsync) leaves neither a truncated output nor a temporary
  file; SIGKILL of the Snakemake controller mid-study, then the README's commands, completes the study
  without redoing finished jobs and with the metrics of an uninterrupted run.
- Numerics: NaN/inf in features or a diverging loss stop training with the step and the loss terms;
  metrics name the run, score column and OOD set of a non-finite score.

Tested elsewhere (not repeated here): schema defaults and basic key errors (test_config.py), a training
job SIGKILLed mid-run resumes to the same prompt (test_train.py; CoCoOp in test_methods.py), NaN features
at the first step (test_train.py), scores and metrics refuse NaN/inf arguments by name (test_scores.py,
test_metrics.py), atomic dataset folders and the NumPy-only unpickler refusing code (test_demo_data.py),
sha256-verified backbone checkpoints (test_openclip_backbone.py), and an unknown config key stopping
Snakemake before any job (test_workflow_demo.py).
"""

from __future__ import annotations

import ast
import copy
import errno
import io
import json
import os
import re
import signal
import subprocess
import time
import tokenize
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from deltaenergy import io as atomic_io
from deltaenergy.config import ConfigError, validate_config
from deltaenergy.data import demo
from deltaenergy.data.demo import build_demo_dataset
from deltaenergy.data.folder import folder_manifest
from deltaenergy.data.images import load_image, load_image_or_skip
from deltaenergy.data.manifest import write_manifest_sidecar
from deltaenergy.evaluate import metrics_tables
from deltaenergy.features import save_features
from deltaenergy.io import write_npz
from deltaenergy.methods.train import TrainingDiverged, load_prompt, save_prompt, train_learner
from deltaenergy.prompts import PromptLearner
from deltaenergy.provenance import collect_provenance
from deltaenergy.report import write_index
from test_demo_data import _png_bytes

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["t-shirt", "trouser", "pullover", "dress"]


@pytest.fixture
def demo_cfg():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def backbone():
    from deltaenergy.backbones import build_backbone

    return build_backbone("standin-conse")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["train"].update(epochs="50"), "train.epochs"),
        (lambda c: c["fewshot"].update(shots=4), "fewshot.shots"),
        (lambda c: c["fewshot"].update(seeds=[1.5]), "fewshot.seeds.0"),
        (lambda c: c["scores"]["msp"].update(tau="0.01"), "scores.msp.tau"),
        (lambda c: c["methods"]["ebm"].update(renormalize="yes"), "methods.ebm.renormalize"),
        (lambda c: c["data"].update(on_bad_image="ignore"), "data.on_bad_image"),
        (lambda c: c["scores"]["delta_energy"].update(top_c=2), "scores.delta_energy"),
        (lambda c: c["data"]["sizes"]["fashion_mnist"].pop("val_per_class"), "data.sizes.fashion_mnist"),
    ],
)
def test_wrong_types_and_unknown_keys_name_the_key(demo_cfg, edit, key):
    edit(demo_cfg)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate_config(demo_cfg)


def test_on_bad_image_defaults_to_stop(demo_cfg):
    del demo_cfg["data"]["on_bad_image"]
    assert validate_config(demo_cfg)["data"]["on_bad_image"] == "stop"


def test_impossible_combinations_at_their_boundary(demo_cfg):
    """c may equal K but not exceed it; shots may equal the smallest class's training pool but not exceed it."""
    n_classes = 10
    pool = demo_cfg["data"]["sizes"]["fashion_mnist"]["train_per_class"]
    ok = copy.deepcopy(demo_cfg)
    ok["scores"]["delta_energy"]["c"] = n_classes
    ok["fewshot"].update(shots=[1, pool], method_shots={})
    validate_config(ok)
    bad = copy.deepcopy(ok)
    bad["scores"]["delta_energy"]["c"] = n_classes + 1
    with pytest.raises(ConfigError, match=r"config key 'scores.delta_energy.c': c = 11 must be between 1 and .*\(10\)"):
        validate_config(bad)
    bad = copy.deepcopy(ok)
    bad["fewshot"]["shots"] = [pool + 1]
    with pytest.raises(ConfigError, match=rf"config key 'fewshot.shots': \[{pool + 1}\] exceed"):
        validate_config(bad)


@pytest.mark.workflow
def test_impossible_combination_stops_snakemake_before_any_job(demo_cfg, tmp_path):
    """The cross-key checks run where the schema does: while Snakemake builds the DAG."""
    from conftest import _run_snakemake as run_snakemake

    demo_cfg["scores"]["delta_energy"]["c"] = 11
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(demo_cfg))
    proc = run_snakemake(tmp_path / "w", path, "-n")
    assert proc.returncode != 0 and "config key 'scores.delta_energy.c'" in proc.stdout + proc.stderr
    assert not (tmp_path / "w" / "results").exists()


# --------------------------------------------------------------------------- data: image loading


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Reference compositing on white: ``c·a + 255·(1 − a)`` with a = alpha / 255."""
    a = alpha[..., None] / 255.0
    return rgb * a + 255.0 * (1.0 - a)


RNG = np.random.default_rng(0)
GREY, ALPHA = RNG.integers(0, 256, (5, 7), dtype=np.uint8), RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
CMYK = RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)
INDEX = RNG.integers(0, 4, (5, 7), dtype=np.uint8)
PALETTE = RNG.integers(0, 256, (4, 3), dtype=np.uint8)
DEEP = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)


def _palette_image() -> Image.Image:
    image = Image.fromarray(INDEX, "P")
    image.putpalette(PALETTE.ravel().tolist())
    return image


# (file name, image, save options, NumPy reference RGB)
MODES = {
    "grey": ("g.png", lambda: Image.fromarray(GREY, "L"), {}, lambda: np.repeat(GREY[..., None], 3, -1)),
    "grey_alpha": ("la.png", lambda: Image.fromarray(np.stack([GREY, ALPHA], -1), "LA"), {},
                   lambda: _on_white(np.repeat(GREY[..., None], 3, -1), ALPHA)),
    "rgba": ("rgba.png", lambda: Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA"), {}, lambda: _on_white(RGB, ALPHA)),
    "palette": ("p.png", _palette_image, {}, lambda: PALETTE[INDEX]),
    "palette_transparent": ("pt.png", _palette_image, {"transparency": 2},
                            lambda: np.where((INDEX == 2)[..., None], 255, PALETTE[INDEX])),
    # CMYK -> RGB: (255 − C)(255 − K) / 255 per channel (TIFF keeps CMYK lossless)
    "cmyk": ("c.tif", lambda: Image.fromarray(CMYK, "CMYK"), {},
             lambda: (255.0 - CMYK[..., :3]) * (255.0 - CMYK[..., 3:]) / 255.0),
    "grey16": ("i16.png", lambda: Image.fromarray(DEEP), {}, lambda: np.repeat(DEEP[..., None] * (255.0 / 65535.0), 3, -1)),
    "bilevel": ("b.png", lambda: Image.fromarray(GREY > 127), {}, lambda: np.repeat((GREY > 127)[..., None] * 255.0, 3, -1)),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_becomes_rgb_like_the_reference(tmp_path, mode):
    name, make, options, reference = MODES[mode]
    got = load_image(_save(make(), tmp_path / name, **options))
    assert got.mode == "RGB" and got.size == (7, 5)
    assert np.abs(np.asarray(got, float) - reference()).max() <= 1.0  # rounding of 8-bit conversions


def test_truncated_and_non_images_are_refused_naming_the_file(tmp_path):
    data = _png_bytes(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("cut.png", "text.png", "empty.jpg"):
        with pytest.raises(ValueError, match=f"unreadable image .*{name}"):
            load_image(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def _claiming_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (valid CRC, tiny file): a decompression bomb."""
    import struct
    import zlib

    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_decompression_bombs_are_refused_not_warned(tmp_path, recwarn):
    png = _png_bytes(Image.new("RGB", (20, 20)))
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(_save(Image.new("RGB", (20, 20)), tmp_path / "small.png"), max_pixels=399)
    assert load_image(tmp_path / "small.png", max_pixels=400).size == (20, 20)
    # 10,000² is in PIL's warning-only zone (its error starts at twice its limit); 30,000² beyond it
    for side in (10_000, 30_000):
        (tmp_path / f"bomb{side}.png").write_bytes(_claiming_size(png, side, side))
        with pytest.raises(ValueError, match=f"bomb{side}.png: decompression bomb"):
            load_image(tmp_path / f"bomb{side}.png")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_on_bad_image_skip_records_and_stop_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    skipped = []
    assert load_image_or_skip(bad, "skip", skipped) is None
    assert skipped == [{"path": str(bad), "error": skipped[0]["error"]}] and "bad.png" in skipped[0]["error"]
    with pytest.raises(ValueError, match=r"bad.png.*data.on_bad_image: stop"):
        load_image_or_skip(bad, "stop", [])
    with pytest.raises(ValueError, match="data.on_bad_image: 'ignore'"):
        load_image_or_skip(bad, "ignore", [])


# --------------------------------------------------------------------------- data: datasets


def _write_class_folders(root: Path, counts: dict[str, int]) -> None:
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (c * 40, i, 0)).save(root / name / f"{i:03d}.png")


def test_folder_manifest_labels_every_image_in_class_order(tmp_path):
    root = tmp_path / "set"
    _write_class_folders(root, {"cat": 2, "dog": 3})
    (root / "dog" / "notes.txt").write_text("ignored")
    (root / "cat" / ".hidden.png").write_text("ignored")
    manifest = folder_manifest(root, ["dog", "cat"], dataset="pets", role="id", split="val")
    assert manifest["path"].tolist() == [str(root / "dog" / f"{i:03d}.png") for i in range(3)] + \
        [str(root / "cat" / f"{i:03d}.png") for i in range(2)]
    assert manifest["label"].tolist() == [0, 0, 0, 1, 1]
    assert set(manifest["split"]) == {"val"} and set(manifest["dataset"]) == {"pets"} and manifest.attrs["skipped"] == []
    ood = folder_manifest(root, ["cat", "dog"], dataset="pets", role="ood")
    assert set(ood["label"]) == {-1}


def test_folder_manifest_names_missing_empty_and_unknown_class_folders(tmp_path):
    root = tmp_path / "set"
    _write_class_folders(root, {"cat": 1, "dog": 1, "empty": 0})
    with pytest.raises(FileNotFoundError, match=f"class folder\\(s\\) missing: {root / 'bird'}, {root / 'fish'}"):
        folder_manifest(root, ["cat", "bird", "dog", "fish", "empty"], dataset="pets", role="id")
    with pytest.raises(ValueError, match=f"without images .*{root / 'empty'}"):
        folder_manifest(root, ["cat", "dog", "empty"], dataset="pets", role="id")
    with pytest.raises(ValueError, match=f"{root / 'empty'} are not in the expected class list"):
        folder_manifest(root, ["cat", "dog"], dataset="pets", role="id")
    with pytest.raises(FileNotFoundError, match="dataset folder .*nowhere not found"):
        folder_manifest(tmp_path / "nowhere", ["cat"], dataset="pets", role="id")


def test_folder_manifest_skips_and_counts_or_stops_on_bad_images(tmp_path):
    root = tmp_path / "set"
    _write_class_folders(root, {"cat": 2, "dog": 2})
    data = (root / "dog" / "001.png").read_bytes()
    (root / "dog" / "001.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"unreadable image .*dog/001.png"):
        folder_manifest(root, ["cat", "dog"], dataset="pets", role="id")
    manifest = folder_manifest(root, ["cat", "dog"], dataset="pets", role="id", on_bad_image="skip")
    assert manifest["label"].tolist() == [0, 0, 1]
    assert [s["path"] for s in manifest.attrs["skipped"]] == [str(root / "dog" / "001.png")]
    (root / "dog" / "000.png").write_text("broken too")
    with pytest.raises(ValueError, match=f"class folder {root / 'dog'} has no readable image \\(2 skipped"):
        folder_manifest(root, ["cat", "dog"], dataset="pets", role="id", on_bad_image="skip")


def _clipart_tree(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "openclipart/png"
    for category in demo.CLIPART_CATEGORIES:
        (root / category).mkdir(parents=True)
    (root / "animals/red.png").write_bytes(_png_bytes(Image.new("RGB", (40, 40), (255, 0, 0))))
    (root / "food/blue.png").write_bytes(_png_bytes(Image.new("RGB", (40, 40), (0, 0, 255))))
    (root / "tools/broken.png").write_bytes(_png_bytes(Image.new("RGB", (40, 40)))[:60])
    monkeypatch.setenv(demo.SYSTEM_DATA_ENV, str(tmp_path))


def test_skipped_images_reach_sidecar_provenance_and_index(tmp_path, monkeypatch):
    """An image-file source of the demo (clip art) under both switch values, through to the report index."""
    _clipart_tree(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"broken.png.*data.on_bad_image: stop"):
        build_demo_dataset("clipart", tmp_path / "out", {"n": 2}, seed=0)
    assert not (tmp_path / "out" / "clipart").exists()
    manifest = build_demo_dataset("clipart", tmp_path / "out", {"n": 2}, seed=0, on_bad_image="skip")
    assert len(manifest) == 2 and [Path(s["path"]).name for s in manifest.attrs["skipped"]] == ["broken.png"]

    path = tmp_path / "manifests" / "clipart.csv"
    write_manifest_sidecar(path, manifest, "skip")
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["images"] == 2 and sidecar["skipped"] == 1 and sidecar["on_bad_image"] == "skip"
    assert "broken.png" in sidecar["skipped_files"][0]["path"] and sidecar["skipped_files"][0]["error"]
    clean = tmp_path / "manifests" / "digits.csv"
    write_manifest_sidecar(clean, build_demo_dataset("digits", tmp_path / "out", {"n": 3}, seed=0), "skip")

    features = tmp_path / "f.npz.json"
    features.write_text(json.dumps({"backbone": {"name": "x"}, "image_forward_count": 2, "n_images": 2}))
    config = {"benchmark": "b", "data": {"seed": 0}, "fewshot": {"seeds": [1]}}
    prov = collect_provenance(config, [], [str(features)], manifest_sidecars=[f"{path}.json", f"{clean}.json"])
    assert prov["skipped_images"] == {str(path): 1, str(clean): 0}
    write_index(tmp_path / "index.html", {}, prov)
    page = (tmp_path / "index.html").read_text()
    assert f"<th>unreadable images skipped</th><td>1 from {path} (listed in {path}.json)</td>" in page
    write_index(tmp_path / "clean.html", {}, {**prov, "skipped_images": {str(clean): 0}})
    assert "<th>unreadable images skipped</th><td>none</td>" in (tmp_path / "clean.html").read_text()


# --------------------------------------------------------------------------- models


def test_prompt_files_of_another_shape_kind_or_content_are_refused(backbone, tmp_path):
    two = PromptLearner(backbone, CLASSES, 2, generator=torch.Generator().manual_seed(0))
    save_prompt(tmp_path / "p.pt", two, method="coop", shots=1, seed=1)
    fresh = PromptLearner(backbone, CLASSES, 2, generator=torch.Generator().manual_seed(5))
    assert load_prompt(tmp_path / "p.pt", fresh) == {"method": "coop", "shots": 1, "seed": 1}
    assert torch.equal(fresh.ctx, two.ctx)

    three = PromptLearner(backbone, CLASSES, 3)
    before = three.ctx.detach().clone()
    with pytest.raises(ValueError, match=r"prompt file .*p.pt: prompt state 'ctx': shape \(2, 384\) != \(3, 384\)"):
        load_prompt(tmp_path / "p.pt", three)
    assert torch.equal(three.ctx, before)  # nothing half-loaded

    torch.save({"state": {"ctx": two.ctx.detach(), "meta_net.0.weight": torch.zeros(1)}}, tmp_path / "kind.pt")
    with pytest.raises(ValueError, match="kind.pt: prompt state holds .*another method kind"):
        load_prompt(tmp_path / "kind.pt", fresh)
    torch.save({"ctx": two.ctx.detach()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare.pt holds no learned 'state'"):
        load_prompt(tmp_path / "bare.pt", fresh)
    data = (tmp_path / "p.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("cut.pt", "junk.pt", "empty.pt"):
        with pytest.raises(ValueError, match=f"prompt file .*{name} cannot be read"):
            load_prompt(tmp_path / name, fresh)


class _Payload:
    """A pickled object whose unpickling would run code (``os.system``)."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_prompt_file_with_code_is_refused_unexecuted(backbone, tmp_path, capfd):
    torch.save({"state": {"ctx": torch.zeros(2, 384)}, "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt cannot be read .*weights_only"):
        load_prompt(tmp_path / "evil.pt", PromptLearner(backbone, CLASSES, 2))
    assert "pwned" not in capfd.readouterr().out


def _python_sources() -> list[Path]:
    return sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "workflow").rglob("*.py")])


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_torch_load_is_weights_only():
    found = 0
    for path in _python_sources():
        for node, name in _calls(ast.parse(path.read_text())):
            if name.endswith("torch.load") or name == "load" and "from torch import load" in path.read_text():
                found += 1
                flags = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in flags and ast.literal_eval(flags["weights_only"]) is True, \
                    f"{path.relative_to(ROOT)}:{node.lineno}: torch.load without weights_only=True"
    assert found >= 4  # the backbones' weights, the training checkpoint, prompt files
    rules = [*(ROOT / "workflow").rglob("*.smk"), ROOT / "Snakefile"]
    assert not [p for p in rules if "torch.load" in p.read_text()]


def test_nothing_is_unpickled():
    """pickle/joblib/pandas pickles, unpicklers and ``allow_pickle=True`` appear nowhere in the code."""
    banned = {"pickle.load", "pickle.loads", "pd.read_pickle", "pandas.read_pickle", "joblib.load", "dill.load",
              "cloudpickle.load", "torch.serialization.load", "marshal.loads", "shelve.open"}
    for path in _python_sources():
        tree = ast.parse(path.read_text())
        for node, name in _calls(tree):
            assert name not in banned, f"{path.relative_to(ROOT)}:{node.lineno}: {name}"
            for k in node.keywords:
                if k.arg == "allow_pickle":
                    assert ast.literal_eval(k.value) is False, f"{path.relative_to(ROOT)}:{node.lineno}: allow_pickle"
        unpicklers = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                      and any(ast.unparse(b).endswith("Unpickler") for b in n.bases)]
        assert not unpicklers, path


def _shell_commands(path: Path) -> list[tuple[int, list[tokenize.TokenInfo]]]:
    """The tokens of each ``shell:`` directive's value in a Snakemake file (same line or indented block)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    commands = []
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NAME and tok.string == "shell" and tokens[i + 1].string == ":":
            j, body, depth = i + 2, [], 0
            block = tokens[j].type == tokenize.NEWLINE
            while True:
                t = tokens[j]
                if t.type == tokenize.INDENT:
                    depth += 1
                elif t.type == tokenize.DEDENT and (depth := depth - 1) <= 0:
                    break
                elif t.type == tokenize.NEWLINE and not block:
                    break
                elif t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.DEDENT):
                    body.append(t)
                j += 1
            commands.append((tok.start[0], body))
    return commands


QUOTED_NAMESPACES = ("input", "output", "params", "wildcards", "log")


def test_no_config_value_reaches_a_shell_unquoted():
    """Shell commands are plain string literals (no f-strings, no expressions built from config); every
    placeholder is a rule field quoted with ``:q`` (numbers from threads/resources need none); no ``run:``
    block or ``shell()`` call; no Python ``shell=True``, ``os.system`` or ``os.popen``."""
    import string

    files = [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]
    # A shell: may also name a module-level constant assigned a plain string literal (e.g. NOTEBOOK_SHELL).
    constants = {}
    for path in files:
        text = path.read_text()
        for match in re.finditer(r"^([A-Z_]+) = (\((?:.|\n)*?\n\)|\".*\")$", text, re.M):
            node = ast.parse(match.group(2), mode="eval").body
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                constants[match.group(1)] = node.value
    commands = [(p, line, body) for p in files for line, body in _shell_commands(p)]
    assert commands  # the report rule runs papermill and nbconvert
    for path, line, body in commands:
        where = f"{path.relative_to(ROOT)}:{line}"
        if len(body) == 1 and body[0].type == tokenize.NAME:
            assert body[0].string in constants, f"{where}: shell: names {body[0].string}, not a string constant"
            command = constants[body[0].string]
        else:
            assert body and all(t.type == tokenize.STRING for t in body), f"{where}: shell: must be string literals"
            assert not any("f" in t.string[: t.string.index(t.string[-1])].lower() for t in body), f"{where}: f-string"
            command = "".join(ast.literal_eval(t.string) for t in body)
        for _, field, spec, conversion in string.Formatter().parse(command):
            if field is None:
                continue
            namespace = field.split(".")[0].split("[")[0]
            assert namespace in QUOTED_NAMESPACES + ("threads", "resources"), f"{where}: {{{field}}} in a shell"
            if namespace in QUOTED_NAMESPACES:
                assert spec == "q" and conversion is None, f"{where}: {{{field}}} is not quoted with :q"
    for path in files:
        names = [t.string for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)]
        assert "run" not in [n for n, nxt in zip(names, names[1:]) if nxt == ":"], f"{path}: run: block"
        assert "shell(" not in "".join(names), f"{path}: shell() call"
    for path in _python_sources():
        for node, name in _calls(ast.parse(path.read_text())):
            assert name not in ("os.system", "os.popen"), f"{path.relative_to(ROOT)}:{node.lineno}: {name}"
            assert not any(k.arg == "shell" for k in node.keywords), f"{path.relative_to(ROOT)}:{node.lineno}: shell="


# --------------------------------------------------------------------------- faults: full disk


class _FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes free: a write beyond it writes what fits, then fails (ENOSPC)."""

    room = 1000

    def write(self, data) -> int:
        free = self.room - self.tell()
        if len(data) > free:
            super().write(bytes(data)[: max(free, 0)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


class _Backbone:
    image_forward_count = 3

    def cache_key(self) -> dict:
        return {"name": "test"}


def _features(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"global": rng.normal(size=(3, 64)).astype(np.float32), "local": rng.normal(size=(3, 4, 64)).astype(np.float32)}


def test_disk_full_while_writing_features_leaves_no_partial_file(tmp_path, monkeypatch):
    folder = tmp_path / "features"
    save_features(folder / "old.npz", _features(0), _Backbone(), "m.csv")
    old = {p.name: p.read_bytes() for p in folder.iterdir()}

    monkeypatch.setattr(atomic_io, "open", lambda path, mode: _FullDisk(path, mode), raising=False)
    for name in ("new.npz", "old.npz"):  # a fresh output, and a rerun over a complete older one
        with pytest.raises(OSError) as err:
            save_features(folder / name, _features(1), _Backbone(), "m.csv")
        assert err.value.errno == errno.ENOSPC
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == old  # old files intact, nothing else
    monkeypatch.undo()
    assert atomic_io.read_npz(folder / "old.npz")["global"].tolist() == _features(0)["global"].tolist()


def test_disk_full_reported_at_fsync_leaves_nothing(tmp_path, monkeypatch):
    """Network file systems may report ENOSPC or a quota only when the data is flushed."""

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_io.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_npz(tmp_path / "f.npz", x=np.zeros(10))
    with pytest.raises(OSError, match="No space left"):
        atomic_io.write_parquet(tmp_path / "s.parquet", pd.DataFrame({"a": [1.0]}))
    assert list(tmp_path.iterdir()) == []


def test_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    (tmp_path / ".f.npz.abc_1234.tmp").write_bytes(b"half")  # as left by a SIGKILLed writer
    other = tmp_path / ".f.npz.json.abc_1234.tmp"  # another output's (being written by someone else)
    other.write_bytes(b"x")
    write_npz(tmp_path / "f.npz", x=np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "f.npz"]


# --------------------------------------------------------------------------- numerics


def _train(backbone, feats, method, tmp_path, local=None, **cfg):
    train = {"epochs": 3, "batch_size": 4, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 0,
             "warmup_lr": 1e-5, "tau": 0.05, **cfg}
    return train_learner(backbone, CLASSES, feats, torch.arange(len(feats)) % 4, method, train,
                         {"n_ctx": 2, "ctx_init": None}, 1, tmp_path / "ckpt.pt", progress=False, local_feats=local)


def _unit(n: int, *shape: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, *shape, generator=torch.Generator().manual_seed(0)), dim=-1)


EBM = {"kind": "ebm", "lambda": 0.1, "mask_mode": "keep_positive", "anchor": "predicted", "renormalize": True,
       "ebm_sign": 1, "ebm_units": "logit"}


def test_inf_features_stop_training_with_step_and_every_loss_term(backbone, tmp_path):
    feats = _unit(8, 384)
    feats[5, 7] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"ebm: loss became nan at epoch 0, step [01] \(terms \{'ce': nan, "
                                               r"'ebm': nan, 'delta_energy': nan\}\)"):
        _train(backbone, feats, EBM, tmp_path)
    assert not (tmp_path / "ckpt.pt").exists()  # nothing from the diverged run is kept to resume from


def test_nan_kept_out_of_the_loss_but_not_its_gradient_stops_at_that_step(backbone, tmp_path):
    """A NaN local feature that LoCoOp's patch selection masks out: the loss stays finite, its gradient does
    not; training stops before the optimizer step, at the step that met it (the image is in one of two)."""
    local = _unit(8, 3, 384)
    local[2, 1] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"locoop: gradient of \['ctx'\] became NaN/inf at epoch 0, step [01] "
                                               r"\(terms \{'ce': [0-9.]+, 'ood_entropy': "):
        _train(backbone, _unit(8, 384), {"kind": "locoop", "lambda": 0.25, "top_k": 2}, tmp_path, local=local)


def test_loss_that_diverges_later_names_that_step(backbone, tmp_path):
    """Finite features, an absurd learning rate: the first step is finite, the context then overflows."""
    with pytest.raises(TrainingDiverged, match=r"coop: loss became nan at epoch 0, step 1 \(terms \{'ce': nan\}\)"):
        _train(backbone, _unit(8, 384), {"kind": "coop"}, tmp_path, lr=1e38)


def test_metrics_name_the_run_column_and_set_of_a_non_finite_score():
    rows = [("id", "test", 0, 0.9), ("id", "test", 1, 0.8), ("ood", "test", -1, float("nan")), ("ood", "test", -1, 0.1)]
    frame = pd.DataFrame(rows, columns=["role", "split", "label", "msp"])
    frame = frame.assign(method="coop", shots=1, seed=2, dataset=["fm", "fm", "digits", "digits"], pred=[0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"coop shots1_seed2, column 'msp', OOD set 'digits': ood_scores contains NaN"):
        metrics_tables(frame, ["msp"])


# --------------------------------------------------------------------------- faults: controller killed


def _small_study(tmp: Path) -> Path:
    """The demo at its smallest: Fashion-MNIST vs digits, CoOp at 1 shot and seed 1, three scores."""
    from conftest import REDUCED, _merge, restrict_methods

    cfg = _merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), copy.deepcopy(REDUCED))
    restrict_methods(cfg, {"coop": {"kind": "coop"}})
    cfg.update(benchmark="killed", fewshot={"shots": [1], "seeds": [1]},
               scores={"msp": {"score": "msp", "tau": 0.01}, "energy": {"score": "energy", "tau": 0.01},
                       "delta_energy": {"score": "delta_energy", "tau": 0.01, "c": 2}})
    cfg["data"].update(covariate=[], ood=["digits"])
    cfg["data"]["sizes"].update(fashion_mnist={"train_per_class": 1, "val_per_class": 1, "test_per_class": 3},
                                ood={"n": 20})
    cfg["train"]["epochs"] = 20  # one step per epoch (10 images, batch 32): long enough to be killed in
    path = tmp / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _job_counts(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (rule -> jobs) from a run's output."""
    lines = output[output.index("Job stats:"):].splitlines()[3:]
    rows = [line.split() for line in lines[: next(i for i, line in enumerate(lines) if not line.strip())]]
    return {rule: int(count) for rule, count in rows}


@pytest.mark.workflow
def test_study_survives_a_killed_controller(tmp_path):
    """SIGKILL the controller (and every job it started, as when a node dies) once training has begun; then
    the README's commands: ``snakemake --unlock``, and the same ``snakemake --cores all`` again."""
    from conftest import SNAKEMAKE

    config = _small_study(tmp_path)
    # The README's command, aimed at the metrics tables: the study's numbers (the diagnostics reports of
    # this one-method, no-covariate-set study are left out to keep the test short).
    targets = [f"results/killed/metrics/{name}" for name in ("detection.csv", "accuracy.csv")]
    command = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--configfile", str(config), "--cores", "all", *targets]

    def run(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
        workdir.mkdir(exist_ok=True)
        return subprocess.run([*command, *extra], cwd=workdir, capture_output=True, text=True, timeout=900)

    reference = run(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    work = tmp_path / "killed"
    work.mkdir()
    res = work / "results" / "killed"
    train = res / "train" / "coop" / "shots1_seed1"
    with open(tmp_path / "first_run.log", "w") as log:
        first = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while first.poll() is None and time.time() < deadline:
        if (train / "checkpoint.pt").exists() or (train / "prompt.pt").exists():
            break
        time.sleep(0.05)
    assert first.poll() is None, (tmp_path / "first_run.log").read_text()[-3000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_in_training = (train / "checkpoint.pt").exists() and not (train / "prompt.pt").exists()
    assert not (res / "metrics" / "detection.csv").exists()
    # Training had begun, so its inputs were finished: they must survive the rerun untouched.
    finished = [res / "manifests" / "fashion_mnist.csv", res / "manifests" / "fashion_mnist.csv.json",
                res / "features" / "standin-conse" / "fashion_mnist.npz",
                res / "features" / "standin-conse" / "fashion_mnist.npz.json",
                res / "manifests" / "fewshot" / "shots1_seed1.csv"]
    mtimes = {p: p.stat().st_mtime_ns for p in finished}

    locked = run(work)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    assert run(work, "--unlock").returncode == 0
    rerun = run(work)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    complete = run(work, "-n")
    assert "Nothing to be done" in complete.stdout + complete.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
    if killed_in_training:  # the rerun trained on from the killed job's last epoch
        assert "resuming from" in (res / "logs" / "train" / "coop" / "shots1_seed1.log").read_text()
    redone, full = _job_counts(rerun.stdout + rerun.stderr), _job_counts(reference.stdout + reference.stderr)
    assert "fewshot_manifest" not in redone and redone["total"] < full["total"], (redone, full)
    for name in ["detection.csv", "accuracy.csv"]:
        pd.testing.assert_frame_equal(pd.read_csv(res / "metrics" / name),
                                      pd.read_csv(tmp_path / "reference" / "results" / "killed" / "metrics" / name),
                                      check_exact=True)
