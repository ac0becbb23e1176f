"""Prompt training over cached image features (no image encoder call), with exact resume.

Schedule (CoOp/Dassl): SGD with momentum and weight decay; the first ``warmup_epochs`` run at the
constant ``warmup_lr``; epoch e >= warmup runs at ``0.5 · lr · (1 + cos(π e / epochs))``. Each epoch
visits every training image once in an order drawn from a generator seeded by (seed, epoch); the last
batch may be smaller (no image is dropped). A checkpoint (learned parameters, optimizer state, log) is
written atomically after every epoch; a rerun with the same fingerprint resumes from it and reaches the
same final prompt as an uninterrupted run. A non-finite loss or gradient stops training with the step
and the loss terms, before the optimizer step (no NaN reaches the prompt or the checkpoint).

Methods (``METHODS``, by ``kind``): the loss, whether the prompt is image-conditioned (CoCoOp: context
plus meta-net, one text-encoder call over B·K prompts per step) and whether the loss needs local
features (LoCoOp). On CUDA the text-encoder forward runs under bfloat16 autocast unless
``train.amp`` is false; on CPU everything stays float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..backbones import Backbone
from ..io import atomic_path
from ..prompts import ConditionalPromptLearner, PromptLearner, mixed_precision
from .losses import coop_loss, ebm_loss, locoop_loss, similarities


@dataclass(frozen=True)
class Method:
    """A training method: ``loss`` (see ``losses``), image-conditioned prompts, needs local features."""

    loss: Callable
    conditional: bool = False
    local: bool = False


METHODS = {
    "coop": Method(coop_loss),
    "ebm": Method(ebm_loss),
    "locoop": Method(locoop_loss, local=True),
    "cocoop": Method(coop_loss, conditional=True),
}


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (configs, data ids) identifying a training run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def epoch_lr(epoch: int, cfg: dict) -> float:
    if epoch < cfg["warmup_epochs"]:
        return cfg["warmup_lr"]
    return 0.5 * cfg["lr"] * (1.0 + math.cos(math.pi * epoch / cfg["epochs"]))


def method_spec(method: dict) -> Method:
    """The ``METHODS`` entry of a ``methods`` config entry; a clear error for an unknown kind."""
    if method.get("kind") not in METHODS:
        raise ValueError(f"methods.<method>.kind: {method.get('kind')!r} is not one of {sorted(METHODS)}")
    return METHODS[method["kind"]]


def _epoch_inputs(plain: dict, views: dict | None, local: bool, seed: int, epoch: int) -> tuple:
    """(global [N, D], local [N, P, D] or None) of one epoch: the plain features, or one cached augmented
    view per image drawn from a generator seeded by (seed, epoch)."""
    if views is None:
        return plain["global"], plain["local"]
    n, v = views["global"].shape[:2]
    pick = torch.randint(v, (n,), generator=torch.Generator().manual_seed(seed * 100_019 + epoch))
    rows = torch.arange(n)
    return views["global"][rows, pick], views["local"][rows, pick] if local else None


def build_learner(
    backbone: Backbone, classnames: list[str], method: dict, prompt_cfg: dict, seed: int
) -> PromptLearner:
    """The untrained learner of ``method``: context drawn from a generator seeded with ``seed`` (then the
    CoCoOp meta-net, ``hidden_ratio`` default 16). Scoring builds it the same way, then loads the state."""
    options = {k: prompt_cfg[k] for k in ("class_token_position", "class_specific") if k in prompt_cfg}
    args = (backbone, classnames, prompt_cfg["n_ctx"], prompt_cfg["ctx_init"], torch.Generator().manual_seed(seed))
    if method_spec(method).conditional:
        return ConditionalPromptLearner(*args, **options, hidden_ratio=method.get("hidden_ratio", 16))
    return PromptLearner(*args, **options)


def train_step(
    learner: PromptLearner,
    optimizer: torch.optim.Optimizer,
    method: dict,
    feats: torch.Tensor,
    labels: torch.Tensor,
    tau: float,
    local: torch.Tensor | None = None,
    amp: bool = True,
    where: str = "",
) -> tuple[float, float, dict]:
    """One optimizer step of ``method`` on a batch of cached features; returns (loss, accuracy, loss terms).

    The text-encoder forward runs under bfloat16 autocast on CUDA when ``amp``. After the step the
    learned parameters' ``.grad`` hold this batch's gradient. ``where`` (e.g. "at epoch 3, step 40") goes
    into the :class:`TrainingDiverged` message.
    """
    spec = method_spec(method)
    params = {k: v for k, v in method.items() if k not in ("kind", "train")}
    with mixed_precision(learner.ctx.device, amp):
        text = learner(feats) if spec.conditional else learner()
    text = text.to(feats.dtype)
    loss, terms = spec.loss(feats, labels, text, tau, params, local=local)
    where = f"{where} (terms {terms}); lower train.lr or check the features for NaN/inf"
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"{method['kind']}: loss became {loss.item()} {where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    bad = [name for name, p in learner.learned_parameters().items()
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:  # e.g. a NaN in features that a mask kept out of the loss but not out of its gradient
        raise TrainingDiverged(f"{method['kind']}: gradient of {bad} became NaN/inf {where}")
    optimizer.step()
    with torch.no_grad():
        acc = float((similarities(feats, text).argmax(-1) == labels).float().mean())
    return loss.item(), acc, terms


def train_learner(
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
    *,
    local_feats: torch.Tensor | None = None,
    views: dict[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> tuple[PromptLearner, list[dict]]:
    """Train the learner of ``method`` (a ``methods`` config entry); return (learner, per-step log).

    ``train_cfg`` is the ``train`` config; the method's own ``train`` entry overrides keys of it (e.g.
    CoCoOp's shorter schedule).
    ``feats`` [N, D] global features, ``labels`` [N]; ``local_feats`` [N, P, D], needed by LoCoOp (ignored
    and not fingerprinted otherwise). ``views``: cached augmented views of the same rows, ``global``
    [N, V, D] (and ``local`` [N, V, P, D] for LoCoOp); each epoch then trains on one view per image, drawn
    from a generator seeded by (seed, epoch), instead of the plain features. ``device``: None = CUDA when available, else CPU; the learner and
    its backbone are moved there and stay there. Save ``learner.learned_state()`` to keep the prompt.
    """
    spec = method_spec(method)
    if spec.local and local_feats is None:
        raise ValueError(f"{method['kind']}: needs local (patch) features; pass local_feats [N, P, D] "
                         f"(the 'local' array of the feature file, rows as feats)")
    if views is not None and (views["global"].shape[0] != feats.shape[0] or (spec.local and "local" not in views)):
        raise ValueError(f"views: expected 'global' [{feats.shape[0]}, V, D]{' and local' if spec.local else ''} for "
                         f"the {feats.shape[0]} training rows, got {({k: tuple(v.shape) for k, v in views.items()})}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    train_cfg = {**train_cfg, **method.get("train", {})}
    amp = train_cfg.get("amp", True)
    tau = train_cfg["tau"]
    parts = [method, train_cfg, prompt_cfg, seed, classnames, feats.shape, float(feats.sum()), labels.tolist()]
    if spec.local:
        parts += [local_feats.shape, float(local_feats.sum())]
    if views is not None:
        parts += [views["global"].shape, float(views["global"].sum())]
    run_id = fingerprint(*parts, device.type)
    learner = build_learner(backbone, classnames, method, prompt_cfg, seed).to(device)
    optimizer = torch.optim.SGD(
        list(learner.learned_parameters().values()),
        lr=train_cfg["lr"], momentum=train_cfg["momentum"], weight_decay=train_cfg["weight_decay"],
    )
    checkpoint = Path(checkpoint)
    start, log = 0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["fingerprint"] == run_id:
            learner.load_learned_state(state["learned"])
            optimizer.load_state_dict(state["optimizer"])
            start, log = state["epoch"], state["log"]
            print(f"resuming from {checkpoint} after epoch {start}")
        else:
            print(f"ignoring {checkpoint}: it belongs to another configuration")

    labels = labels.to(device)
    plain = {"global": feats, "local": local_feats if spec.local else None}
    n = feats.shape[0]
    step = start * math.ceil(n / train_cfg["batch_size"])
    for epoch in tqdm(range(start, train_cfg["epochs"]), desc=f"{method['kind']} seed {seed}", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(epoch, train_cfg)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        feats, local = (t if t is None else t.to(device) for t in _epoch_inputs(plain, views, spec.local, seed, epoch))
        for batch in order.to(device).split(train_cfg["batch_size"]):
            loss, acc, terms = train_step(learner, optimizer, method, feats[batch], labels[batch], tau,
                                          None if local is None else local[batch], amp,
                                          f"at epoch {epoch}, step {step}")
            log.append({"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
                        "loss": loss, "acc": acc, **terms})
            step += 1
        state = {"fingerprint": run_id, "learned": learner.learned_state(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch + 1, "log": log}
        with atomic_path(checkpoint) as tmp:
            torch.save(state, tmp)
    return learner, log


def save_prompt(path: str | Path, learner: PromptLearner, **meta) -> None:
    """Write a trained prompt file atomically: ``{"state": learner.learned_state(), **meta}``."""
    with atomic_path(path) as tmp:
        torch.save({"state": learner.learned_state(), **meta}, tmp)


def load_prompt(path: str | Path, learner: PromptLearner) -> dict:
    """Load a prompt file written by :func:`save_prompt` into ``learner`` (``weights_only``: tensors and
    plain containers only); return its metadata. Unreadable files, files without a ``state`` and states
    of other names or shapes are refused with an error naming the file."""
    fix = "delete it and rerun its train_prompt job, or score with the prompt config it was trained with"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:  # refused object, damaged zip, empty file
        raise ValueError(f"prompt file {path} cannot be read ({type(err).__name__}: {err}); {fix}") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise ValueError(f"prompt file {path} holds no learned 'state' (not written by save_prompt); {fix}")
    try:
        learner.load_learned_state(saved["state"])
    except ValueError as err:
        raise ValueError(f"prompt file {path}: {err}; {fix}") from None
    return {k: v for k, v in saved.items() if k != "state"}

