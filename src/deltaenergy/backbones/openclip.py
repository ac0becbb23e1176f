"""The ``openclip`` backbone: any open_clip CLIP architecture with a CLIP text transformer and tokenizer.

Weights come from a local file (``checkpoint`` with its ``sha256``) or from an open_clip pretrained tag
already in the local cache (``fetch_pretrained`` downloads it once, on a host with internet; building the
backbone never touches the network). State dicts are read with ``torch.load(weights_only=True)`` (or
safetensors) and loaded strictly; a TorchScript archive (OpenAI's release format) is read with
``torch.jit.load``, after its sha256 is checked.

QuickGELU rule. OpenAI's CLIP weights were trained with QuickGELU, open_clip's plain configs use GELU,
and the mismatch only lowers accuracy silently, so it is refused. The weights count as OpenAI-trained
(need QuickGELU) when: a pretrained tag is given and open_clip's config of it says ``quick_gelu``
(``openai``, MetaCLIP, DFN ...; the tag then decides alone, and a tag trained with GELU refuses a
QuickGELU model the same way); else when ``openai=True``; else, with ``openai=None`` (auto), when the
checkpoint is a TorchScript archive or its path contains "openai" (case-insensitive). ``openai=False``
turns the auto-detection off. The model uses QuickGELU when ``force_quick_gelu`` says so, else when
the architecture's config does (the ``*-quickgelu`` names).

Local (patch) features, GL-MCM's formulation (Miyai et al. 2023, ``clip/model.py``; LoCoOp uses the
same): with ``x_p`` the input of the last residual block for patch token p (CLS excluded),
``v_p = x_p + ls_1(out_proj(W_v ln_1(x_p) + b_v))``, ``u_p = v_p + ls_2(mlp(ln_2(v_p)))`` and
``local_p = normalize(ln_post(u_p) @ proj)``: the last block's attention replaced by its value path,
so each patch keeps its own content. Needs a ViT tower with standard blocks; others need
``local_features=False`` (``local`` is then ``[B, 0, D]``).

Text: ids are ``[SOT] tokens [EOT]`` zero-padded to the context length; texts that do not fit raise
(open_clip's tokenizer would truncate silently). ``encode_token_embeddings`` runs the causal transformer
only on the first ``L = max(mask.sum)`` positions: a causal mask makes positions after a prompt's EOT
unable to affect it, so this equals the full-length forward.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import ResidualAttentionBlock, TextTransformer, VisionTransformer
from PIL import Image

from ..data.images import _to_rgb
from ..provenance import config_hash, sha256_file
from . import register_backbone
from .base import Backbone, Tokens

LOCAL_FEATURES = "GL-MCM value path of the last block, ln_post, proj (patch tokens)"


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``constants.pkl``), OpenAI's release format."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split("/")[-1] == "constants.pkl" for name in zf.namelist())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: safetensors, a (``state_dict``-wrapped, DDP-prefixed) dict, or TorchScript."""
    if path.suffix == ".safetensors":
        state = open_clip.factory.load_state_dict(str(path))  # safetensors' own loader (no pickle)
    elif _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice; nothing to act on
            scripted = torch.jit.load(str(path), map_location="cpu")
        derived = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # not weights
        state = {k: v for k, v in scripted.state_dict().items() if k.split(".")[-1] not in derived}
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"backbone.checkpoint: {path} is not a state dict of tensors; save model.state_dict()")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


class _DropMessage(logging.Filter):
    """Drops log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _pretrained_cfg(arch: str, tag: str) -> dict:
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ValueError(f"backbone.pretrained: open_clip has no tag {tag!r} for {arch}; use one of {tags}")
    return cfg


def _hf_filenames(filename: str) -> list[str]:
    """The files open_clip's ``download_pretrained_from_hf`` tries, in its order (safetensors first)."""
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors", filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def cached_pretrained(arch: str, tag: str, cache_dir: str | None = None) -> Path:
    """Local file of an open_clip pretrained tag, found without network access (``FileNotFoundError`` if absent)."""
    cfg = _pretrained_cfg(arch, tag)
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub and open_clip.pretrained.has_hf_hub():  # open_clip prefers the hub when it is installed
        repo, filename = os.path.split(hub)
        for name in _hf_filenames(filename or "open_clip_pytorch_model.bin"):
            try:
                found = open_clip.pretrained.hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=True)
                return Path(found)
            except FileNotFoundError:  # huggingface_hub's LocalEntryNotFoundError: not in the cache
                continue
    elif url:
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return target
    raise FileNotFoundError(
        f"backbone.pretrained: weights {arch}/{tag} are not in the local cache ({cache_dir or 'default cache'}); "
        f"run the download rule (deltaenergy.backbones.openclip.fetch_pretrained({arch!r}, {tag!r}, "
        f"cache_dir={cache_dir!r})) on a host with internet, or set backbone.checkpoint and backbone.sha256"
    )


def fetch_pretrained(arch: str, tag: str, cache_dir: str | None = None) -> dict:
    """Download an open_clip pretrained tag into the cache (network); return its ``path`` and ``sha256``."""
    path = open_clip.download_pretrained(_pretrained_cfg(arch, tag), cache_dir=cache_dir)
    return {"path": str(path), "sha256": sha256_file(path)}


def _resolve_arch(arch: str) -> str:
    """Registered open_clip model name of ``arch`` (a name, or a model-config JSON file registered here)."""
    if arch.endswith(".json"):
        path = Path(arch)
        if not path.is_file():
            raise FileNotFoundError(f"backbone.arch: model config {path} does not exist; fix the path")
        open_clip.add_model_config(path)
        return path.stem
    models = open_clip.list_models()
    if arch not in models:
        close = difflib.get_close_matches(arch, models, n=6, cutoff=0.5) or models[:6]
        raise ValueError(
            f"backbone.arch: open_clip does not know the architecture {arch!r}; use one of its names, "
            f"e.g. {close} (all: open_clip.list_models()), or a path to a model-config .json"
        )
    return arch


def _check_supported(name: str, cfg: dict, local_features: bool) -> None:
    text, vision = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
    hf_text = text.get("hf_model_name") or text.get("hf_tokenizer_name")
    if hf_text or "siglip" in name.lower() or "multimodal_cfg" in cfg:
        raise ValueError(
            f"backbone.arch: {name} has a Hugging Face / SigLIP tokenizer or a CoCa text tower; the openclip backbone "
            f"supports CLIP text transformers with open_clip's CLIP tokenizer (e.g. ViT-B-16, ViT-B-16-quickgelu)"
        )
    if (text.get("tokenizer_kwargs") or {}).get("reduction_mask"):
        raise ValueError(f"backbone.arch: {name}'s tokenizer drops tokens (reduction_mask); use a CLIP architecture")
    if local_features and (vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple))):
        raise ValueError(
            f"backbone.local_features: {name} has no ViT image tower, so there are no patch features; "
            f"set backbone.local_features: false (GL-MCM and LoCoOp then cannot run) or use a ViT architecture"
        )


@dataclass(frozen=True)
class _Packing:
    """Where the K suffixes live: packed rows (valid positions only, prompt after prompt) for the row-wise
    parts of a block, a padded ``[K, S]`` grid for attention. ``grid`` ``[K, S]`` packed row of each grid
    cell (0 where past the prompt's end), ``keep`` ``[K, 1, S, S]`` which suffix keys each grid row sees
    (causal, within the prompt), ``cells`` ``[R]`` grid cell (k·S + s) of each packed row, ``eot`` ``[K]``
    packed row and ``last_step`` ``[K]`` grid column of each prompt's EOT."""

    grid: torch.Tensor
    keep: torch.Tensor
    cells: torch.Tensor
    eot: torch.Tensor
    last_step: torch.Tensor

    @classmethod
    def of(cls, suffix_lengths: torch.Tensor) -> "_Packing":
        n_suf = int(suffix_lengths.max())
        steps = torch.arange(n_suf, device=suffix_lengths.device)
        valid = steps[None, :] < suffix_lengths[:, None]  # [K, S]
        starts = suffix_lengths.cumsum(0) - suffix_lengths
        grid = torch.where(valid, starts[:, None] + steps[None, :], 0)
        causal = steps[None, :] <= steps[:, None]
        return cls(grid=grid, keep=(causal[None] & valid[:, None, :]).unsqueeze(1),
                   cells=torch.nonzero(valid.flatten()).flatten(), eot=starts + suffix_lengths - 1,
                   last_step=suffix_lengths - 1)


def _prefixed_block(
    block: ResidualAttentionBlock, x: torch.Tensor, n_pre: int, pack: _Packing, last: bool
) -> torch.Tensor:
    """One causal ``ResidualAttentionBlock`` over ``x`` ``[G, P + R, W]``: a group's shared prefix rows, then
    the packed suffix rows of its K prompts (see :class:`_Packing`).

    Suffix row s of a prompt attends to the P prefix rows of its group and to its own suffix rows <= s.
    Layer norms, projections and the MLP run once over all rows; attention runs on the padded grid. With
    ``last`` only each prompt's EOT row is computed and returned (``[G, K, W]``); the prefix rows, which
    nothing reads afterwards, are dropped.
    """
    attn = block.attn
    n_group, width = x.shape[0], x.shape[-1]
    n_cls, n_suf = pack.grid.shape
    heads = attn.num_heads
    dim = width // heads

    def split(t: torch.Tensor) -> torch.Tensor:  # [..., R, W] -> [..., heads, R, dim]
        return t.unflatten(-1, (heads, dim)).transpose(-3, -2)

    def merge(t: torch.Tensor) -> torch.Tensor:  # [..., heads, R, dim] -> [..., R, W]
        return t.transpose(-3, -2).flatten(-2)

    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q_pre, k_pre, v_pre = map(split, qkv[:, :n_pre].chunk(3, dim=-1))  # [G, h, P, d]
    q, k, v = map(split, qkv[:, n_pre:][:, pack.grid].chunk(3, dim=-1))  # [G, K, h, S, d]
    keep = pack.keep
    if last:  # only each prompt's EOT query (grid column ``last_step``)
        q = q.gather(-2, pack.last_step.view(1, n_cls, 1, 1, 1).expand(n_group, n_cls, heads, 1, dim))
        keep = keep.gather(-2, pack.last_step.view(n_cls, 1, 1, 1).expand(n_cls, 1, 1, n_suf))
    # scores against the group's prefix keys in one matmul per group (prefix keys are not copied per prompt)
    s_pre = (q.transpose(1, 2).flatten(2, 3) @ k_pre.transpose(-1, -2)).unflatten(2, (n_cls, -1)).transpose(1, 2)
    s_suf = (q @ k.transpose(-1, -2)).masked_fill(~keep, float("-inf"))
    probs = (torch.cat([s_pre, s_suf], dim=-1) * dim**-0.5).softmax(dim=-1)  # [G, K, h, S or 1, P + S]
    p_pre, p_suf = probs.split([n_pre, n_suf], dim=-1)
    from_pre = (p_pre.transpose(1, 2).flatten(2, 3) @ v_pre).unflatten(2, (n_cls, -1)).transpose(1, 2)
    out = merge(from_pre + p_suf @ v)  # [G, K, S or 1, W]
    if last:
        x, out = x[:, n_pre:][:, pack.eot], out[:, :, 0]  # [G, K, W]
    else:
        out_pre = merge(F.scaled_dot_product_attention(q_pre, k_pre, v_pre, is_causal=True))
        out = torch.cat([out_pre, out.flatten(1, 2)[:, pack.cells]], dim=1)  # back to [G, P + R, W]
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@register_backbone("openclip")
class OpenClipBackbone(Backbone):
    """An open_clip CLIP model, frozen; global and GL-MCM local image features, CLIP text features."""

    name = "openclip"

    def __init__(
        self,
        arch: str,
        pretrained: str | None = None,
        checkpoint: str | None = None,
        sha256: str | None = None,
        force_quick_gelu: bool | None = None,
        image_size: int | None = None,
        openai: bool | None = None,
        local_features: bool = True,
        cache_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        self.arch = _resolve_arch(str(arch))
        cfg = open_clip.get_model_config(self.arch)
        _check_supported(self.arch, cfg, local_features)
        tag_cfg = _pretrained_cfg(self.arch, pretrained) if pretrained else None

        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise FileNotFoundError(f"backbone.checkpoint: {path} does not exist; fix the path")
        elif pretrained:
            path = None  # resolved from the cache after the QuickGELU check, which needs no file
        else:
            raise ValueError(
                "backbone: give backbone.pretrained (an open_clip tag) or backbone.checkpoint (a local file with "
                "backbone.sha256); random weights are never used silently"
            )

        quick_gelu = bool(cfg.get("quick_gelu", False)) if force_quick_gelu is None else bool(force_quick_gelu)
        needs, why = None, ""  # None: nothing says how the weights were trained
        if tag_cfg is not None:
            needs, why = bool(tag_cfg.get("quick_gelu", False)), f"open_clip's config of the tag {pretrained!r}"
        elif openai:
            needs, why = True, "backbone.openai: true"
        elif openai is None and _is_torchscript(path):
            needs, why = True, f"{path} is a TorchScript archive (OpenAI's release format)"
        elif openai is None and "openai" in str(path).lower():
            needs, why = True, f"the path {path} contains 'openai'"
        if needs and not quick_gelu:
            alt = f"{self.arch}-quickgelu"
            alt_hint = f"backbone.arch: {alt} or " if alt in open_clip.list_models() else ""
            raise ValueError(
                f"backbone: these are OpenAI-trained weights needing QuickGELU ({why}), but {self.arch} uses GELU, "
                f"which silently lowers accuracy; set {alt_hint}backbone.force_quick_gelu: true "
                f"(if the weights are not OpenAI's, set backbone.openai: false)"
            )
        if needs is False and quick_gelu:
            raise ValueError(
                f"backbone: the weights were trained with GELU ({why}) but {self.arch} would use QuickGELU; "
                f"use the architecture without '-quickgelu' or set backbone.force_quick_gelu: false"
            )

        if path is None:
            path = cached_pretrained(self.arch, pretrained, cache_dir)
        found = sha256_file(path)
        if checkpoint is not None and sha256 is None:
            raise ValueError(
                f"backbone.sha256: required with backbone.checkpoint; {path} has sha256 {found} "
                f"(set backbone.sha256: {found} if this is the file you mean)"
            )
        if sha256 is not None and sha256.lower() != found:
            raise ValueError(
                f"backbone.sha256: {path} has sha256 {found}, expected {sha256}; the file is corrupt or not the "
                f"one the config names: re-fetch it, or update backbone.sha256 if the new file is intended"
            )

        pre = {k: v for k, v in (tag_cfg or {}).items() if k in ("mean", "std", "interpolation", "resize_mode")}
        quiet = _DropMessage("initialized randomly")  # open_clip's notice; the weights are loaded just below
        logging.getLogger().addFilter(quiet)
        try:
            model = open_clip.create_model(
                self.arch, pretrained=None, force_image_size=image_size, force_preprocess_cfg=pre, quick_gelu=quick_gelu
            )
        finally:
            logging.getLogger().removeFilter(quiet)
        state = _read_state_dict(path)
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        if image_size is not None:
            resize_pos_embed(state, model)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:600]
            raise ValueError(
                f"backbone.checkpoint: {path} does not fit the architecture {self.arch} ({detail}); "
                f"set backbone.arch to the architecture the weights were trained with"
            ) from err

        self.model = model.to(device)
        self.pretrained, self.weights_sha256, self.quick_gelu = pretrained, found, quick_gelu
        self.embed_dim = int(cfg["embed_dim"])
        self.config_sha256 = config_hash(cfg)
        self._init_text(model)
        self._init_image(model, local_features)
        self.requires_grad_(False)
        self.train(False)

    @property
    def text_tower(self) -> torch.nn.Module:
        """The module holding the text transformer (the CLIP model itself, or ``model.text``)."""
        return self.model.text if isinstance(self.model, open_clip.CustomTextCLIP) else self.model

    def _init_text(self, model: torch.nn.Module) -> None:
        tower = self.text_tower
        pool = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", None)
        attn_mask = getattr(tower, "attn_mask", None)
        if isinstance(model, open_clip.CustomTextCLIP) and not isinstance(tower, TextTransformer):
            raise ValueError(f"backbone.arch: {self.arch} has no open_clip text transformer; use a CLIP architecture")
        if attn_mask is None or pool not in ("argmax", "eos") or getattr(tower, "cls_emb", None) is not None:
            raise ValueError(
                f"backbone.arch: {self.arch}'s text tower is not a causal CLIP text transformer pooled at the end "
                f"token (pool_type={pool!r}, causal={attn_mask is not None}); use a CLIP architecture"
            )
        self.tokenizer = open_clip.get_tokenizer(self.arch)
        if not isinstance(self.tokenizer, open_clip.SimpleTokenizer):
            raise ValueError(f"backbone.arch: {self.arch} does not use open_clip's CLIP tokenizer; use a CLIP arch")
        self.context_length = int(tower.positional_embedding.shape[0])

    def _init_image(self, model: torch.nn.Module, local_features: bool) -> None:
        visual = model.visual
        size = tuple(PreprocessCfg(**visual.preprocess_cfg).input_size[1:])
        if size[0] != size[1]:
            raise ValueError(f"backbone.image_size: non-square inputs {size} are not supported; use a square size")
        self.image_size = int(size[0])
        if local_features and not (
            isinstance(visual, VisionTransformer)
            and visual.attn_pool is None
            and visual.proj is not None
            and isinstance(visual.transformer.resblocks[-1], ResidualAttentionBlock)
        ):
            raise ValueError(
                f"backbone.local_features: {self.arch}'s image tower is not a plain CLIP ViT (attention pooling or "
                f"custom blocks), so GL-MCM patch features are undefined; set backbone.local_features: false"
            )
        self.local_features = bool(local_features)
        self.transform = image_transform_v2(PreprocessCfg(**visual.preprocess_cfg), is_train=False)
        described = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(self.transform))
        self.preprocess_description = (
            "alpha composited on white, then open_clip eval transform "
            + " ".join(described.split())
            + f" cfg={json.dumps(visual.preprocess_cfg, sort_keys=True)}"
        )

    def train(self, mode: bool = True) -> "OpenClipBackbone":
        """Set the module flag only: the frozen model stays in eval mode (no dropout, no patch dropout)."""
        super().train(mode)
        self.model.eval()
        return self

    # --- image side -------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image -> ``[3, S, S]``: RGB (alpha on white), then open_clip's eval transform."""
        return self.transform(_to_rgb(image))

    def _encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_images: expected [B, 3, H, W] images, got shape {tuple(images.shape)}")
        visual = self.model.visual
        with torch.no_grad():
            weight = next(visual.parameters())
            images = images.to(weight.device, weight.dtype)
            if not isinstance(visual, VisionTransformer):
                glob = F.normalize(visual(images), dim=-1)
                return glob, glob.new_zeros(glob.shape[0], 0, glob.shape[1])
            x = visual._embeds(images)
            blocks, batch_first = visual.transformer.resblocks, visual.transformer.batch_first
            h = x if batch_first else x.transpose(0, 1)
            for block in blocks[:-1]:
                h = block(h)
            last_in = h if batch_first else h.transpose(0, 1)  # [B, 1 + P, W]
            h = blocks[-1](h)
            pooled, _ = visual._pool(h if batch_first else h.transpose(0, 1))
            glob = F.normalize(pooled @ visual.proj if visual.proj is not None else pooled, dim=-1)
            if not self.local_features:
                return glob, glob.new_zeros(glob.shape[0], 0, glob.shape[1])
            return glob, self._local(last_in[:, 1:])

    def _local(self, patches: torch.Tensor) -> torch.Tensor:
        """GL-MCM local features ``[B, P, D]`` from the last block's input patch tokens ``[B, P, W]``."""
        visual = self.model.visual
        block = visual.transformer.resblocks[-1]
        width = patches.shape[-1]
        weight, bias = block.attn.in_proj_weight[2 * width :], block.attn.in_proj_bias
        value = F.linear(block.ln_1(patches), weight, None if bias is None else bias[2 * width :])
        v = patches + block.ls_1(block.attn.out_proj(value))
        v = v + block.ls_2(block.mlp(block.ln_2(v)))
        return F.normalize(visual.ln_post(v) @ visual.proj, dim=-1)

    # --- text side --------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> Tokens:
        """CLIP BPE ids ``[K, context_length]`` and mask (1 up to and including EOT); too-long texts raise."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError(f"tokenize: expected a non-empty list of texts, got {texts!r}")
        tok = self.tokenizer
        rows = [[tok.sot_token_id, *tok.encode(text), tok.eot_token_id] for text in texts]
        ids = torch.zeros(len(rows), self.context_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (text, row) in enumerate(zip(texts, rows)):
            if len(row) > self.context_length:
                raise ValueError(
                    f"tokenize: {text!r} is {len(row)} tokens with start/end, more than {self.arch}'s context "
                    f"length {self.context_length} (open_clip would truncate it silently); shorten it"
                )
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return Tokens(ids=ids, mask=mask)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """CLIP word embeddings ``[K, L, W]`` (positional embeddings are added by the encoder)."""
        table = self.text_tower.token_embedding
        return table(ids.to(table.weight.device))

    def encode_token_embeddings(self, embeds: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """Normalised ``[K, D]`` text features at each prompt's EOT; runs only up to the longest prompt."""
        if tuple(embeds.shape[:2]) != tuple(tokens.mask.shape) or embeds.shape[1] > self.context_length:
            raise ValueError(
                f"encode_token_embeddings: embeds {tuple(embeds.shape)} do not match mask {tuple(tokens.mask.shape)} "
                f"(at most {self.context_length} positions)"
            )
        tower = self.text_tower
        lengths = tokens.mask.to(embeds.device).sum(dim=1)
        n = int(lengths.max())
        cast = tower.transformer.get_cast_dtype()
        x = embeds[:, :n].to(cast) + tower.positional_embedding[:n].to(cast)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:n, :n])
        x = tower.ln_final(x)
        return self._project(x[torch.arange(x.shape[0], device=x.device), lengths - 1])

    def encode_prefixed(self, prefix: torch.Tensor, suffix: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """Shared-prefix encoding (see ``Backbone.encode_prefixed``), exact under the causal mask.

        A prefix position attends only to earlier prefix positions, so its hidden states (and keys and
        values) are the same in all K prompts of a group and are computed once per group; each suffix
        position attends to the group's prefix keys and its own prompt's earlier suffix keys. Suffix rows
        are packed (no position after a prompt's EOT is computed) and the last block computes only what the
        pooled EOT rows need (no prefix rows, one query row per prompt).
        Towers whose blocks are not open_clip's ``ResidualAttentionBlock`` use the plain encoding.
        """
        tower = self.text_tower
        blocks = tower.transformer.resblocks
        n_pre = prefix.shape[1]
        lengths = tokens.mask.to(suffix.device).sum(dim=1)
        n = int(lengths.max())
        plain = not all(
            type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") and b.attn.in_proj_weight is not None
            and b.attn.bias_k is None and not b.attn.add_zero_attn for b in blocks
        )
        if plain or int(lengths.min()) <= n_pre or n > self.context_length:
            return super().encode_prefixed(prefix, suffix, tokens)
        cast = tower.transformer.get_cast_dtype()
        pos = tower.positional_embedding.to(cast)
        pack = _Packing.of(lengths - n_pre)
        # packed rows: the prefix, then every prompt's suffix up to its EOT (no position past an EOT is computed)
        suf = (suffix[:, :, : n - n_pre].to(cast) + pos[n_pre:n]).flatten(1, 2)[:, pack.cells]
        x = torch.cat([prefix.to(cast) + pos[:n_pre], suf], dim=1)  # [G, P + R, W]
        for i, block in enumerate(blocks):
            x = _prefixed_block(block, x, n_pre, pack, last=i == len(blocks) - 1)
        return self._project(tower.ln_final(x))  # [G, K, W]: the last block returned the EOT rows

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The text tower's projection of pooled EOT states [..., W], L2-normalised: [..., D]."""
        proj = self.text_tower.text_projection
        if isinstance(proj, torch.nn.Linear):
            pooled = proj(pooled)
        elif proj is not None:
            pooled = pooled @ proj
        return F.normalize(pooled, dim=-1)

    def cache_key(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "arch_config_sha256": self.config_sha256,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "quick_gelu": self.quick_gelu,
            "image_size": self.image_size,
            "local_features": LOCAL_FEATURES if self.local_features else None,
            "preprocess": self.preprocess_description,
            "open_clip": f"open_clip_torch=={open_clip.__version__}",
        }
