"""Prompt training over cached image features (no image encoder call), with exact resume.

Schedule (CoOp/Dassl): SGD with momentum and weight decay; the first ``warmup_epochs`` run at the
constant ``warmup_lr``; epoch e >= warmup runs at ``0.5 · lr · (1 + cos(π e / epochs))``. Each epoch
visits every training image once in an order drawn from a generator seeded by (seed, epoch); the last
batch may be smaller (no image is dropped). A checkpoint (context, optimizer state, log) is written
atomically after every epoch; a rerun with the same fingerprint resumes from it and reaches the same
final prompt as an uninterrupted run. A non-finite loss stops training with the step and loss terms.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from ..backbones import Backbone
from ..io import atomic_path
from ..prompts import PromptLearner
from .losses import LOSSES


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (configs, data ids) identifying a training run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def epoch_lr(epoch: int, cfg: dict) -> float:
    if epoch < cfg["warmup_epochs"]:
        return cfg["warmup_lr"]
    return 0.5 * cfg["lr"] * (1.0 + math.cos(math.pi * epoch / cfg["epochs"]))


def train_prompt(
    backbone: Backbone,
    classnames: list[str],
    feats: torch.Tensor,
    labels: torch.Tensor,
    method: dict,
    train_cfg: dict,
    prompt_cfg: dict,
    seed: int,
    checkpoint: str | Path,
    progress: bool = True,
) -> tuple[torch.Tensor, list[dict]]:
    """Train the context vectors of ``method`` (a ``methods`` config entry); return (ctx, per-step log)."""
    loss_fn = LOSSES[method["kind"]]
    params = {k: v for k, v in method.items() if k != "kind"}
    tau = train_cfg["tau"]
    learner = PromptLearner(
        backbone, classnames, prompt_cfg["n_ctx"], prompt_cfg["ctx_init"], torch.Generator().manual_seed(seed)
    )
    optimizer = torch.optim.SGD(
        [learner.ctx], lr=train_cfg["lr"], momentum=train_cfg["momentum"], weight_decay=train_cfg["weight_decay"]
    )
    run_id = fingerprint(method, train_cfg, prompt_cfg, seed, classnames, feats.shape, float(feats.sum()), labels.tolist())
    checkpoint = Path(checkpoint)
    start, log = 0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["fingerprint"] == run_id:
            learner.ctx.data.copy_(state["ctx"])
            optimizer.load_state_dict(state["optimizer"])
            start, log = state["epoch"], state["log"]
            print(f"resuming from {checkpoint} after epoch {start}")
        else:
            print(f"ignoring {checkpoint}: it belongs to another configuration")

    n = feats.shape[0]
    step = start * math.ceil(n / train_cfg["batch_size"])
    for epoch in tqdm(range(start, train_cfg["epochs"]), desc=f"{method['kind']} seed {seed}", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(epoch, train_cfg)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for batch in order.split(train_cfg["batch_size"]):
            text = learner()
            loss, terms = loss_fn(feats[batch], labels[batch], text, tau, params)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{method['kind']}: loss became {float(loss)} at epoch {epoch}, step {step} "
                    f"(terms {terms}); lower train.lr or check the features for NaN/inf"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                acc = float(((feats[batch] @ text.T).argmax(-1) == labels[batch]).float().mean())
            log.append({"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
                        "loss": float(loss), "acc": acc, **terms})
            step += 1
        state = {"fingerprint": run_id, "ctx": learner.ctx.detach().clone(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch + 1, "log": log}
        with atomic_path(checkpoint) as tmp:
            torch.save(state, tmp)
    return learner.ctx.detach().clone(), log
