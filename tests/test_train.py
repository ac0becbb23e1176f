"""Prompt training: the CoOp schedule, exact resume after SIGKILL, and divergence errors."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from deltaenergy.methods.train import TrainingDiverged, epoch_lr, train_learner

CFG = {"epochs": 6, "batch_size": 8, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1,
       "warmup_lr": 1e-5, "tau": 0.01}
PROMPT = {"n_ctx": 2, "ctx_init": None}
CLASSES = ["t-shirt", "trouser", "pullover", "dress"]

DRIVER = textwrap.dedent(
    """
    import sys, torch
    from deltaenergy.backbones import build_backbone
    from deltaenergy.methods.train import train_learner
    cfg = {cfg!r}
    feats = torch.nn.functional.normalize(torch.randn(24, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.arange(24) % 4
    learner, log = train_learner(build_backbone("standin-conse"), {classes!r}, feats, labels, {{"kind": "coop"}}, cfg,
                                 {prompt!r}, 1, sys.argv[1], progress=False)
    torch.save(learner.ctx.detach(), sys.argv[2])
    """
)


def test_schedule_is_warmup_then_cosine():
    assert epoch_lr(0, CFG) == CFG["warmup_lr"]
    assert epoch_lr(1, CFG) == pytest.approx(0.5 * 0.02 * (1 + math.cos(math.pi / 6)))
    assert epoch_lr(5, CFG) < epoch_lr(2, CFG)


def _driver(tmp_path, epochs, ckpt, out):
    script = tmp_path / f"train_{epochs}.py"
    script.write_text(DRIVER.format(cfg={**CFG, "epochs": epochs}, classes=CLASSES, prompt=PROMPT))
    return [sys.executable, str(script), str(ckpt), str(out)]


def test_resume_after_sigkill_gives_the_same_prompt(tmp_path):
    epochs = 40
    ref = subprocess.run(_driver(tmp_path, epochs, tmp_path / "ref.ckpt", tmp_path / "ref.pt"), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]

    ckpt = tmp_path / "run.ckpt"
    proc = subprocess.Popen(_driver(tmp_path, epochs, ckpt, tmp_path / "run.pt"), stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; raise the epoch count"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    assert 3 <= killed_at < epochs and not (tmp_path / "run.pt").exists()

    resumed = subprocess.run(_driver(tmp_path, epochs, ckpt, tmp_path / "run.pt"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "run.pt", weights_only=True), torch.load(tmp_path / "ref.pt", weights_only=True))


def test_checkpoint_of_another_config_is_ignored(tmp_path, capsys):
    from deltaenergy.backbones import build_backbone

    bb = build_backbone("standin-conse")
    feats = torch.nn.functional.normalize(torch.randn(8, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.arange(8) % 4
    ckpt = tmp_path / "c.pt"
    train_learner(bb, CLASSES, feats, labels, {"kind": "coop"}, {**CFG, "epochs": 2}, PROMPT, 1, ckpt, progress=False)
    train_learner(bb, CLASSES, feats, labels, {"kind": "coop"}, {**CFG, "epochs": 2, "lr": 0.01}, PROMPT, 1, ckpt,
                  progress=False)
    assert "belongs to another configuration" in capsys.readouterr().out


def test_nan_features_stop_training_with_step_and_terms(tmp_path):
    from deltaenergy.backbones import build_backbone

    feats = torch.full((8, 384), float("nan"))
    with pytest.raises(TrainingDiverged, match=r"epoch 0, step 0 \(terms \{'ce': nan"):
        train_learner(build_backbone("standin-conse"), CLASSES, feats, torch.arange(8) % 4, {"kind": "coop"}, CFG, PROMPT,
                      1, tmp_path / "c.pt", progress=False)
