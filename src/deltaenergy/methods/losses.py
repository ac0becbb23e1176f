"""Training objectives of the prompt-learning methods, over cached image features.

Shapes: ``feats`` [B, D] L2-normalised image features, ``labels`` [B] class indices, ``text`` [K, D]
L2-normalised class text features under the current prompt. Logits are ``feats @ text.T / tau``.
Energy convention (method.md): E(s) = -tau * logsumexp(s / tau); lower energy = more ID.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def energy(sims: torch.Tensor, tau: float) -> torch.Tensor:
    """Free energy per row, E(s) = -tau * logsumexp(s / tau), in cosine units."""
    return -tau * torch.logsumexp(sims / tau, dim=-1)


def masked_energy_change(
    feats: torch.Tensor,
    text: torch.Tensor,
    anchor: torch.Tensor,
    tau: float,
    mask_mode: str = "keep_positive",
    renormalize: bool = True,
) -> torch.Tensor:
    """ΔE_mask = E(s̃) - E(s) per sample, where s̃ uses the image feature masked by P = f ⊙ t_anchor.

    ``keep_positive`` keeps the elements with P >= 0 (ZS CLIP(+) of the paper's Fig. 3),
    ``keep_negative`` those with P <= 0. With ``renormalize`` the masked feature is re-normalised.
    """
    prod = feats * text[anchor]
    keep = prod >= 0 if mask_mode == "keep_positive" else prod <= 0
    masked = feats * keep
    if renormalize:
        masked = F.normalize(masked, dim=-1)
    return energy(masked @ text.T, tau) - energy(feats @ text.T, tau)


def coop_loss(feats, labels, text, tau, params) -> tuple[torch.Tensor, dict[str, float]]:
    """CoOp: cross-entropy of the logits ``feats @ text.T / tau``."""
    ce = F.cross_entropy(feats @ text.T / tau, labels)
    return ce, {"ce": ce.item()}


def ebm_loss(feats, labels, text, tau, params) -> tuple[torch.Tensor, dict[str, float]]:
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


LOSSES = {"coop": coop_loss, "ebm": ebm_loss}
