"""Training objectives of the prompt-learning methods, over cached image features.

Signature ``loss_fn(feats, labels, text, tau, params, local=None) -> (loss, {term: float})``.
Shapes: ``feats`` [B, D] L2-normalised image features, ``labels`` [B] class indices, ``text`` [K, D]
L2-normalised class text features under the current prompt, or [B, K, D] per-image text features
(CoCoOp); ``local`` [B, P, D] L2-normalised local (patch) features (LoCoOp). Logits are
``similarities(feats, text) / tau``. Energy convention (method.md): E(s) = -tau * logsumexp(s / tau);
lower energy = more ID.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def energy(sims: torch.Tensor, tau: float) -> torch.Tensor:
    """Free energy per row, E(s) = -tau * logsumexp(s / tau), in cosine units."""
    return -tau * torch.logsumexp(sims / tau, dim=-1)


def mask_features(
    feats: torch.Tensor, text: torch.Tensor, anchor: torch.Tensor, mask_mode: str = "keep_positive", renormalize: bool = True
) -> torch.Tensor:
    """Image features ``[B, D]`` masked by the sign of ``P = f ⊙ t_anchor`` (method.md, Eq. mask-image).

    ``keep_positive`` keeps the elements with P >= 0 (ZS CLIP(+) of the paper's Fig. 3),
    ``keep_negative`` those with P <= 0. With ``renormalize`` the masked feature is re-normalised.
    """
    if mask_mode not in ("keep_positive", "keep_negative"):
        raise ValueError(f"mask_mode must be 'keep_positive' or 'keep_negative', got {mask_mode!r}")
    prod = feats * text[anchor]
    keep = prod >= 0 if mask_mode == "keep_positive" else prod <= 0
    masked = feats * keep
    return F.normalize(masked, dim=-1) if renormalize else masked


def masked_energy_change(
    feats: torch.Tensor,
    text: torch.Tensor,
    anchor: torch.Tensor,
    tau: float,
    mask_mode: str = "keep_positive",
    renormalize: bool = True,
) -> torch.Tensor:
    """ΔE_mask = E(s̃) - E(s) per sample, where s̃ uses the image feature masked by P = f ⊙ t_anchor
    (:func:`mask_features`)."""
    masked = mask_features(feats, text, anchor, mask_mode, renormalize)
    return energy(masked @ text.T, tau) - energy(feats @ text.T, tau)


def similarities(feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[B, K]``: ``feats @ text.T``, or ``f_b · text_bᵀ`` per image for text [B, K, D]."""
    return feats @ text.T if text.ndim == 2 else torch.einsum("bd,bkd->bk", feats, text)


def coop_loss(feats, labels, text, tau, params, local=None) -> tuple[torch.Tensor, dict[str, float]]:
    """CoOp (and CoCoOp, with per-image text): cross-entropy of the logits ``similarities / tau``."""
    ce = F.cross_entropy(similarities(feats, text) / tau, labels)
    return ce, {"ce": ce.item()}


def ood_patch_entropy(
    local_sims: torch.Tensor, labels: torch.Tensor, tau: float, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoCoOp's OOD regulariser -mean H(softmax(s_p / tau)) over the selected patches, and the selection.

    ``local_sims`` [B, P, K], ``labels`` [B]. Patch p of image b is selected (treated as OOD) when its
    label is not among its ``top_k`` classes, i.e. at least ``top_k`` classes have a strictly higher
    similarity than the label (ties rank in the label's favour). No patch selected: 0 (no gradient).
    Returns (term, selected [B, P] bool). The entropy is exact (the authors add 1e-5 inside the log).
    """
    label_sims = local_sims.gather(2, labels.view(-1, 1, 1).expand(-1, local_sims.shape[1], 1))
    selected = (local_sims > label_sims).sum(dim=-1) >= top_k
    logp = F.log_softmax(local_sims / tau, dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1)
    term = -torch.where(selected, ent, torch.zeros_like(ent)).sum() / selected.sum().clamp(min=1)
    return term, selected


def locoop_loss(feats, labels, text, tau, params, local=None) -> tuple[torch.Tensor, dict[str, float]]:
    """LoCoOp (Miyai et al. 2023): CE + λ · L_ood, L_ood = :func:`ood_patch_entropy` of ``local @ text.T``.

    ``params``: ``lambda`` (default 0.25) and ``top_k`` (default 200, the paper's ImageNet value; must
    be in [1, K-1]).
    """
    if local is None:
        raise ValueError("locoop: needs local (patch) features [B, P, D]; pass local_feats to train_learner")
    n_cls, top_k = text.shape[0], params.get("top_k", 200)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k < n_cls:
        raise ValueError(f"locoop: config key methods.<method>.top_k = {top_k!r} must be an integer in "
                         f"[1, K-1] = [1, {n_cls - 1}] for K = {n_cls} classes (the paper's 200 is for ImageNet)")
    ce = F.cross_entropy(feats @ text.T / tau, labels)
    ood, selected = ood_patch_entropy(local @ text.T, labels, tau, top_k)
    loss = ce + params.get("lambda", 0.25) * ood
    return loss, {"ce": ce.item(), "ood_entropy": ood.item(), "ood_fraction": selected.float().mean().item()}


def ebm_loss(feats, labels, text, tau, params, local=None) -> tuple[torch.Tensor, dict[str, float]]:
    """EBM (method.md): CE + λ · L_EBM with L_EBM = -ebm_sign · mean(ΔE_mask) in logit or cosine units."""
    sims = feats @ text.T
    ce = F.cross_entropy(sims / tau, labels)
    anchor = labels if params["anchor"] == "label" else sims.argmax(dim=-1)
    delta = masked_energy_change(feats, text, anchor, tau, params["mask_mode"], params["renormalize"])
    if params["ebm_units"] == "logit":
        delta = delta / tau
    ebm = -params["ebm_sign"] * delta.mean()
    loss = ce + params["lambda"] * ebm
    return loss, {"ce": ce.item(), "ebm": ebm.item(), "delta_energy": delta.mean().item()}


LOSSES = {"coop": coop_loss, "ebm": ebm_loss, "locoop": locoop_loss, "cocoop": coop_loss}
