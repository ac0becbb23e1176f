"""A BERT encoder in plain torch (the stand-in's all-MiniLM-L6-v2 text tower), loaded from safetensors.

Why not ``transformers``: importing its BERT costs ~3.5 CPU-s per process (it pulls in the generation
utilities and ``torch._dynamo``), and every training, scoring and Hessian job of the study builds the
text tower; the demo runs ~80 such jobs. This is the same computation as Hugging Face's ``BertModel`` in
eval mode: post-LayerNorm layers, exact (erf) GELU, absolute position embeddings, token type 0 for every
token, padded keys masked out of the attention. tests/test_standin_backbone.py checks it against
transformers' ``BertModel`` and sentence-transformers' encoder of the same weights.

Module names follow the checkpoint's keys, so the state dict loads strictly (the unused pooler aside).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Checkpoint entries this encoder does not use: the [CLS] pooler (sentence embeddings are mean-pooled)
# and the position-id buffer (positions are 0..L-1).
UNUSED_KEYS = ("pooler.", "embeddings.position_ids")
# BertEncoder.mean_pooled runs batches of at most this many real tokens as one packed sequence, larger ones
# grouped by text length. Measured (forward + backward, 1 CPU thread, the demo's class prompts): 10 prompts
# (90 tokens) 61 ms packed vs 99 grouped and 74 padded; 30 (270 tokens) 182 vs 189; 40 (360) 246 vs 236;
# 80 (720) 615 vs 409; 640 prompts grouped 3.2 s vs 3.7 s in packed rows of 128 tokens and 4.3 s padded.
PACK_TOKENS = 256


class _Dense(nn.Module):
    """``LayerNorm(residual + dense(x))``: the output block of BERT's attention and feed-forward parts."""

    def __init__(self, cin: int, cout: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class _SelfAttention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.self = _SelfAttention(width)
        self.output = _Dense(width, width, eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, W]; ``keep`` [B, 1, 1, L] bool, True for the keys (real tokens) every query attends to."""
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  [B, H, L, W/H]
        q, k, v = split(self.self.query(x)), split(self.self.key(x)), split(self.self.value(x))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).flatten(2)
        return self.output(context, x)


class _Intermediate(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(width, heads, eps)
        self.intermediate = _Intermediate(width, hidden)
        self.output = _Dense(hidden, width, eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, keep)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class _Encoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(width, heads, hidden, eps) for _ in range(layers))


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, width: int, positions: int, types: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.token_type_embeddings = nn.Embedding(types, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)


class BertEncoder(nn.Module):
    """BERT's embedding sums and encoder layers; ``forward`` returns the last hidden state ``[B, L, W]``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BertEncoder: supports gelu and absolute positions only, got {config}")
        eps = config["layer_norm_eps"]
        self.embeddings = _Embeddings(config["vocab_size"], config["hidden_size"], config["max_position_embeddings"],
                                      config["type_vocab_size"], eps)
        self.encoder = _Encoder(config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
                                config["intermediate_size"], eps)

    @classmethod
    def from_pretrained(cls, model_dir: Path) -> "BertEncoder":
        """The encoder of ``model_dir`` (``config.json`` and ``model.safetensors``, Hugging Face layout)."""
        from safetensors.torch import load_file

        model = cls(json.loads((model_dir / "config.json").read_text()))
        state = load_file(model_dir / "model.safetensors")
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(UNUSED_KEYS)}, strict=True)
        return model

    def _embed(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """BERT's input: word embeddings + position embeddings (``positions``, broadcast) + token type 0."""
        emb = self.embeddings
        x = inputs_embeds + emb.position_embeddings.weight[positions] + emb.token_type_embeddings.weight[0]
        return emb.LayerNorm(x)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``inputs_embeds`` [B, L, W] word embeddings, ``attention_mask`` [B, L] (1 = real token)."""
        x = self._embed(inputs_embeds, torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device))
        keep = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x

    def mean_pooled(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden state over each text's real tokens, ``[B, W]`` (not normalised).

        The same numbers as ``forward`` followed by a masked mean, with no padding token going through
        the layers; ``attention_mask`` must be right-padded (1s, then 0s), as tokenizers pad. Texts whose
        real tokens total at most ``PACK_TOKENS`` run as one packed sequence with block-diagonal
        attention (each token sees its own text); larger batches run once per distinct text length.
        """
        mask = attention_mask.bool()
        lengths = mask.sum(dim=1)
        if not torch.equal(mask.long().cumprod(dim=1).sum(dim=1), lengths):
            raise ValueError("BertEncoder.mean_pooled: the attention mask is not right-padded (1s then 0s per row)")
        if not bool((lengths > 0).all()):
            raise ValueError("BertEncoder.mean_pooled: a text has no tokens (an all-zero mask row)")
        if int(lengths.sum()) > PACK_TOKENS:
            pooled, rows = [], []
            for length in lengths.unique().tolist():
                group = (lengths == length).nonzero().squeeze(1)
                pooled.append(self(inputs_embeds[group, :length], attention_mask[group, :length]).mean(dim=1))
                rows.append(group)
            return torch.cat(pooled)[torch.cat(rows).argsort()]
        text = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # [T]
        position = torch.arange(len(text), device=text.device) - (lengths.cumsum(0) - lengths)[text]
        x = self._embed(inputs_embeds[mask], position)[None]  # [1, T, W]: the real tokens, text after text
        keep = (text[:, None] == text[None, :])[None, None]  # [1, 1, T, T]
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x.new_zeros(len(lengths), x.shape[-1]).index_add(0, text, x[0]) / lengths[:, None].to(x.dtype)
