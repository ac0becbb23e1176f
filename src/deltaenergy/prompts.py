"""Prompts: hand-written templates (zero-shot) and learnable context vectors (CoOp-style).

A learned prompt for class j is ``[BOS] ctx_1 .. ctx_n  <class name> . [EOS]``: the n context vectors
are shared by all classes (generic context) and replace the token embeddings of n placeholder tokens;
the backbone's text tower then encodes the whole sequence. Text features are L2-normalised ``[K, D]``.
"""

from __future__ import annotations

import open_clip
import torch

from .backbones import Backbone

PLACEHOLDER = "X"


def template_ensemble(name: str) -> list[str]:
    """The named template list, as ``str.format`` patterns with one ``{}`` for the class name."""
    if name != "openai_imagenet_templates":
        raise KeyError(f"zeroshot.ensemble: unknown template ensemble {name!r}")
    return [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


@torch.no_grad()
def zeroshot_text_features(backbone: Backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """Class text features ``[K, D]``: mean over templates of normalised features, re-normalised (CLIP)."""
    feats = torch.stack([backbone.encode_text([t.format(c) for c in classnames]) for t in templates])
    return torch.nn.functional.normalize(feats.mean(0), dim=-1)


class PromptLearner(torch.nn.Module):
    """Generic learnable context (CoOp) in front of each class name, on any backbone's text tower.

    ``ctx_init`` (a phrase such as "a photo of a") initialises the context from that phrase's token
    embeddings and sets n_ctx to its token count; otherwise n_ctx vectors are drawn from N(0, 0.02²)
    with ``generator``. At initialisation from a phrase, ``forward()`` equals
    ``backbone.encode_text([f"{ctx_init} {name}." ...])``.
    """

    def __init__(
        self,
        backbone: Backbone,
        classnames: list[str],
        n_ctx: int = 4,
        ctx_init: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if ctx_init:
            init_ids = backbone.tokenize([ctx_init])
            n_ctx = int(init_ids.mask.sum()) - 2  # minus the start and end tokens
        placeholder = " ".join([PLACEHOLDER] * n_ctx)
        self.tokens = backbone.tokenize([f"{placeholder} {name}." for name in classnames])
        with torch.no_grad():
            embeds = backbone.token_embeddings(self.tokens.ids)
        self.register_buffer("prefix", embeds[:, :1].clone())
        self.register_buffer("suffix", embeds[:, 1 + n_ctx :].clone())
        if ctx_init:
            with torch.no_grad():
                ctx = backbone.token_embeddings(init_ids.ids)[0, 1 : 1 + n_ctx].clone()
        else:
            ctx = torch.randn(n_ctx, embeds.shape[-1], generator=generator) * 0.02
        self.ctx = torch.nn.Parameter(ctx)

    def forward(self) -> torch.Tensor:
        """Normalised class text features ``[K, D]`` under the current context."""
        n_cls = self.prefix.shape[0]
        ctx = self.ctx.unsqueeze(0).expand(n_cls, -1, -1)
        embeds = torch.cat([self.prefix, ctx, self.suffix], dim=1)
        return self.backbone.encode_token_embeddings(embeds, self.tokens)
