"""Prompts: hand-written templates (zero-shot) and learnable context vectors (CoOp, CoCoOp).

A learned prompt for class j is ``[BOS] ctx_1 .. ctx_n <class name> . [EOS]`` (class token at the end;
CoOp's front and middle layouts too): the n context vectors, shared by all classes (generic) or one set
per class (class-specific), replace the token embeddings of n placeholder tokens; the backbone's text
tower then encodes the whole sequence. Text features are L2-normalised ``[K, D]``; CoCoOp's
image-conditioned prompts give one such matrix per image, ``[B, K, D]``.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .backbones import Backbone, Tokens

PLACEHOLDER = "X"


def template_ensemble(name: str) -> list[str]:
    """The named template list, as ``str.format`` patterns with one ``{}`` for the class name."""
    if name != "openai_imagenet_templates":
        raise KeyError(f"zeroshot.ensemble: unknown template ensemble {name!r}")
    from .openclip_lists import zero_shot_metadata

    return [t("{}") for t in zero_shot_metadata().OPENAI_IMAGENET_TEMPLATES]


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
        # SOT and the context before the name: the same tokens in every prompt unless the context is per class
        self.n_shared = 1 if self.class_specific else 1 + {"end": n_ctx, "front": 0, "middle": n_ctx // 2}[
            class_token_position]
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

    def class_context(self) -> torch.Tensor:
        """The context of every class ``[K, n, W]`` (the shared one repeated when generic)."""
        n_cls = self.token_embeds.shape[0]
        return self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(n_cls, -1, -1)

    def embed_context(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt input embeddings ``[..., K, L, W]`` with ``ctx`` ``[..., K, n, W]`` at the context positions."""
        lead = ctx.shape[:-3]
        embeds = self.token_embeds.expand(*lead, *self.token_embeds.shape)
        index = self.ctx_index.unsqueeze(-1).expand(*lead, *ctx.shape[-3:])
        return embeds.scatter(-2, index, ctx.to(self.token_embeds.dtype))

    def prompt_embeddings(self) -> torch.Tensor:
        """Input embeddings ``[K, L, W]`` of the prompts under the current context."""
        return self.embed_context(self.class_context())

    def encode(self, embeds: torch.Tensor) -> torch.Tensor:
        """Features ``[G, K, D]`` of prompt embeddings ``[G, K, L, W]`` whose first ``n_shared`` positions are
        the same for all K classes of a group: the backbone encodes that shared prefix once per group."""
        shared = self.n_shared
        return self.backbone.encode_prefixed(embeds[:, 0, :shared], embeds[:, :, shared:], self.tokens)

    def forward(self) -> torch.Tensor:
        """Normalised class text features ``[K, D]`` under the current context."""
        return self.encode(self.prompt_embeddings().unsqueeze(0))[0]

    def learned_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The trained parameters by name (the optimizer's and the checkpoint's order)."""
        return {"ctx": self.ctx}

    def learned_state(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of :meth:`learned_parameters` (what a trained prompt file holds)."""
        return {name: p.detach().cpu().clone() for name, p in self.learned_parameters().items()}

    @torch.no_grad()
    def load_learned_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a :meth:`learned_state` into this learner (same names and shapes)."""
        params = self.learned_parameters()
        if set(state) != set(params):
            raise ValueError(
                f"prompt state holds {sorted(state)} but this {type(self).__name__} learns {sorted(params)}; "
                f"it was trained with another method kind or prompt config"
            )
        for name, p in params.items():
            if not isinstance(state[name], torch.Tensor):
                raise ValueError(f"prompt state {name!r} is a {type(state[name]).__name__}, not a tensor")
            if state[name].shape != p.shape:
                raise ValueError(f"prompt state {name!r}: shape {tuple(state[name].shape)} != {tuple(p.shape)} "
                                 f"(another prompt config, e.g. prompt.n_ctx?)")
            p.copy_(state[name])


class ConditionalPromptLearner(PromptLearner):
    """CoCoOp (Zhou et al. 2022): every context vector is shifted by a meta-net of the image feature.

    ``ctx_i(x) = ctx_i + π(f)`` with ``π = Linear(D, D // hidden_ratio) -> ReLU -> Linear(., W)`` (D the
    joint embedding width of the image features, W the token embedding width). ``forward(f)`` ``[B, D]``
    gives per-image class text features ``[B, K, D]`` from one text-encoder call over B·K prompts; the
    logits of image b are ``f_b · T(f_b)ᵀ / tau``. The meta-net weights and biases are drawn like
    PyTorch's ``Linear`` default, U(±1/√fan_in), from ``generator`` after the context.
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
        hidden_ratio: int = 16,
    ) -> None:
        super().__init__(backbone, classnames, n_ctx, ctx_init, generator, class_token_position, class_specific)
        dim, width = backbone.embed_dim, self.ctx.shape[-1]
        if isinstance(hidden_ratio, bool) or int(hidden_ratio) != hidden_ratio or not 1 <= hidden_ratio <= dim:
            raise ValueError(f"methods.<cocoop>.hidden_ratio: must be an integer in [1, {dim}] (the meta-net's "
                             f"hidden width is {dim} // hidden_ratio), got {hidden_ratio!r}")
        hidden = dim // int(hidden_ratio)
        layers = [torch.nn.utils.skip_init(torch.nn.Linear, dim, hidden), torch.nn.ReLU(),
                  torch.nn.utils.skip_init(torch.nn.Linear, hidden, width)]
        with torch.no_grad():
            for layer in layers[::2]:
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=generator) * (2 * bound) - bound)
        self.meta_net = torch.nn.Sequential(*layers).to(self.ctx.device)

    def forward(self, image_feats: torch.Tensor) -> torch.Tensor:
        """Normalised per-image class text features ``[B, K, D]`` for image features ``[B, D]``."""
        if image_feats.ndim != 2:
            raise ValueError(
                f"ConditionalPromptLearner: expected image features [B, D], got {tuple(image_feats.shape)}"
            )
        shift = self.meta_net(image_feats.to(self.meta_net[0].weight.dtype))  # [B, W]
        ctx = self.class_context().unsqueeze(0) + shift[:, None, None, :].to(self.ctx.dtype)  # [B, K, n, W]
        return self.encode(self.embed_context(ctx))  # one group of K prompts per image

    def learned_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The context, then the meta-net's weights and biases."""
        return {**super().learned_parameters(), **{f"meta_net.{k}": v for k, v in self.meta_net.named_parameters()}}


def mixed_precision(device: torch.device | str, enabled: bool = True):
    """bfloat16 autocast for text-encoder forwards on CUDA when ``enabled``; a no-op context elsewhere."""
    if torch.device(device).type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def image_conditioned_text(
    learner: ConditionalPromptLearner, feats: torch.Tensor, batch_size: int = 64, amp: bool = True
) -> torch.Tensor:
    """Per-image class text features ``[N, K, D]`` (in ``feats``' dtype and device), ``batch_size`` images
    per text-encoder call (B·K prompts each), under bfloat16 autocast on CUDA when ``amp``."""
    device = learner.ctx.device
    parts = []
    for part in feats.split(batch_size) if len(feats) else ():
        with mixed_precision(device, amp):
            parts.append(learner(part.to(device)).to(feats.device, feats.dtype))
    return torch.cat(parts) if parts else feats.new_zeros(0, learner.token_embeds.shape[0], feats.shape[-1])


@torch.no_grad()
def image_conditioned_sims(
    learner: ConditionalPromptLearner, feats: torch.Tensor, batch_size: int = 64, amp: bool = True
) -> torch.Tensor:
    """Cosine similarities ``[N, K]``, ``s_b = f_b · T(f_b)ᵀ``, of image features ``[N, D]`` (see
    :func:`image_conditioned_text`)."""
    parts = [torch.einsum("bd,bkd->bk", part, image_conditioned_text(learner, part, batch_size, amp))
             for part in feats.split(batch_size) if len(feats)]
    return torch.cat(parts) if parts else feats.new_zeros(0, learner.token_embeds.shape[0])
