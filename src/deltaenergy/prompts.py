"""Prompts: hand-written templates (zero-shot) and learnable context vectors (CoOp-style).

A learned prompt for class j is ``[BOS] ctx_1 .. ctx_n <class name> . [EOS]`` (class token at the end;
CoOp's front and middle layouts too): the n context vectors, shared by all classes (generic) or one set
per class (class-specific), replace the token embeddings of n placeholder tokens; the backbone's text
tower then encodes the whole sequence. Text features are L2-normalised ``[K, D]``.
"""

from __future__ import annotations

import open_clip
import torch

from .backbones import Backbone, Tokens

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


POSITIONS = ("end", "middle", "front")


class PromptLearner(torch.nn.Module):
    """Learnable context vectors (CoOp) around each class name, on any backbone's text tower.

    With n context vectors ``c_1..c_n`` (h = n // 2), the prompt of class k is, by ``class_token_position``:
    ``end`` ``[SOS] c_1..c_n name_k . [EOS]``; ``front`` ``[SOS] name_k c_1..c_n . [EOS]``; ``middle``
    ``[SOS] c_1..c_h name_k c_h+1..c_n . [EOS]`` (CoOp's layouts). The context is shared by all classes
    (``ctx`` ``[n, W]``) or, with ``class_specific``, one per class (``ctx`` ``[K, n, W]``).

    ``ctx_init`` (a phrase such as "a photo of a") initialises every context from that phrase's token
    embeddings and sets n to its token count; otherwise the vectors are drawn from N(0, 0.02²) with
    ``generator``. At initialisation from phrase words ``w_1..w_n``, ``forward()`` equals
    ``backbone.encode_text`` of "w_1..w_n {name}." (end), "{name} w_1..w_n." (front) and
    "w_1..w_h {name} w_h+1..w_n." (middle). Sequences are trimmed to the longest prompt.
    """

    def __init__(
        self,
        backbone: Backbone,
        classnames: list[str],
        n_ctx: int = 4,
        ctx_init: str | None = None,
        generator: torch.Generator | None = None,
        class_token_position: str = "end",
        class_specific: bool = False,
    ) -> None:
        super().__init__()
        if class_token_position not in POSITIONS:
            raise ValueError(f"prompt.class_token_position: {class_token_position!r} is not one of {POSITIONS}")
        self.backbone = backbone
        self.class_token_position, self.class_specific = class_token_position, bool(class_specific)
        if ctx_init:
            init_ids = backbone.tokenize([ctx_init])
            n_ctx = int(init_ids.mask.sum()) - 2  # minus the start and end tokens
        if n_ctx < 1:
            raise ValueError(f"prompt.n_ctx: must be >= 1, got {n_ctx} (ctx_init={ctx_init!r})")
        self.n_ctx = n_ctx
        self.tokens, ctx_index = self._layout(backbone, list(classnames), n_ctx, class_token_position)
        with torch.no_grad():
            embeds = backbone.token_embeddings(self.tokens.ids)
        self.register_buffer("token_embeds", embeds.detach().clone())  # [K, L, W]; ctx positions overwritten
        self.register_buffer("ctx_index", ctx_index.to(embeds.device))  # [K, n_ctx] positions of the context
        n_cls, width = len(classnames), embeds.shape[-1]
        shape = (n_cls, n_ctx, width) if self.class_specific else (n_ctx, width)
        if ctx_init:
            with torch.no_grad():
                ctx = backbone.token_embeddings(init_ids.ids)[0, 1 : 1 + n_ctx].clone().expand(shape).clone()
        else:
            ctx = torch.randn(shape, generator=generator) * 0.02
        self.ctx = torch.nn.Parameter(ctx.to(embeds.device, embeds.dtype))

    @staticmethod
    def _layout(backbone: Backbone, classnames: list[str], n_ctx: int, position: str) -> tuple[Tokens, torch.Tensor]:
        """Tokens of the placeholder prompts (trimmed to the longest) and the context positions ``[K, n_ctx]``.

        The positions follow from the class name's own token count. Each prompt's tokens are checked to be
        the placeholders spliced into the tokens of "{name}." (end) or "{name} ." (front, middle), which
        holds for tokenizers that split at spaces and punctuation (CLIP BPE, WordPiece).
        """
        half = n_ctx // 2
        before, after = {"end": (n_ctx, 0), "front": (0, n_ctx), "middle": (half, n_ctx - half)}[position]
        texts = [" ".join([PLACEHOLDER] * before + [name] + [PLACEHOLDER] * after) + "." for name in classnames]
        cores = [f"{name}." if after == 0 else f"{name} ." for name in classnames]
        try:
            tokens = backbone.tokenize(texts)
        except ValueError as err:
            raise ValueError(
                f"prompt: a class name does not fit with {n_ctx} context tokens ({err}); shorten that class name "
                f"or lower prompt.n_ctx"
            ) from err
        core_tokens = backbone.tokenize(cores)
        name_len = backbone.tokenize(classnames).mask.sum(dim=1) - 2
        steps = torch.arange(n_ctx)
        index = 1 + steps + torch.where(steps < before, 0, name_len[:, None])  # [K, n_ctx]
        placeholder = int(backbone.tokenize([PLACEHOLDER]).ids[0, 1])
        for k, text in enumerate(texts):
            core = core_tokens.ids[k, : int(core_tokens.mask[k].sum())]
            split = 1 + int(name_len[k])
            expected = torch.cat([core[:1], torch.full((before,), placeholder), core[1:split],
                                  torch.full((after,), placeholder), core[split:]])
            if not torch.equal(tokens.ids[k, : int(tokens.mask[k].sum())], expected):
                raise ValueError(
                    f"prompt: the tokens of {text!r} are not those of {cores[k]!r} with the placeholders spliced in "
                    f"(this backbone's tokenizer merges the class name {classnames[k]!r} with its neighbours); "
                    f"use prompt.class_token_position: end or change the class name"
                )
        length = int(tokens.mask.sum(dim=1).max())
        return Tokens(ids=tokens.ids[:, :length], mask=tokens.mask[:, :length]), index.contiguous()

    def prompt_embeddings(self) -> torch.Tensor:
        """Input embeddings ``[K, L, W]`` of the prompts under the current context."""
        n_cls, width = self.token_embeds.shape[0], self.token_embeds.shape[-1]
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(n_cls, -1, -1)
        index = self.ctx_index.unsqueeze(-1).expand(-1, -1, width)
        return self.token_embeds.scatter(1, index, ctx.to(self.token_embeds.dtype))

    def forward(self) -> torch.Tensor:
        """Normalised class text features ``[K, D]`` under the current context."""
        return self.backbone.encode_token_embeddings(self.prompt_embeddings(), self.tokens)
