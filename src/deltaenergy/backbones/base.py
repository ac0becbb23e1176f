"""The backbone interface every vision-language model implements (open_clip and the offline stand-in).

Conventions:
- ``encode_images`` returns L2-normalised global features ``[B, D]`` and L2-normalised local (patch)
  features ``[B, P, D]`` in the same joint space as the text features.
- The text side is split so prompt learners can replace token embeddings: ``tokenize`` gives ids and an
  attention mask, ``token_embeddings`` maps ids to the encoder's input embeddings ``[K, L, W]``, and
  ``encode_token_embeddings`` runs the text encoder on such embeddings and returns L2-normalised
  ``[K, D]`` features. ``encode_text(texts)`` equals the composition of the three. ``encode_prefixed``
  encodes prompts that share a prefix (a learner's generic context); it equals the plain encoding.
- ``image_forward_count`` counts images that went through the image tower in this process; the feature
  rule records it so a test can prove every image is encoded exactly once per study.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from PIL import Image


@dataclass(frozen=True)
class Tokens:
    """Token ids ``[K, L]`` and attention mask ``[K, L]`` (1 = real token) of K prompts."""

    ids: torch.Tensor
    mask: torch.Tensor


class Backbone(torch.nn.Module, abc.ABC):
    """A frozen vision-language model with a joint embedding space of width ``embed_dim``."""

    name: str
    embed_dim: int
    image_size: int

    def __init__(self) -> None:
        super().__init__()
        self.image_forward_count = 0

    # --- image side -------------------------------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Convert any PIL image (any mode) to the model's input tensor ``[3, H, W]``."""

    @abc.abstractmethod
    def _encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global ``[B, D]`` and local ``[B, P, D]`` features, both L2-normalised."""

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the image tower on a batch ``[B, 3, H, W]`` and count the images."""
        self.image_forward_count += int(images.shape[0])
        return self._encode_images(images)

    # --- text side --------------------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, texts: list[str]) -> Tokens:
        """Tokenize K texts to padded ids and mask. Raises ValueError naming a text that is too long."""

    @abc.abstractmethod
    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[K, L, W]`` of token ids ``[K, L]`` (word embeddings only)."""

    @abc.abstractmethod
    def encode_token_embeddings(self, embeds: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """Text features ``[K, D]`` (L2-normalised) from input embeddings that follow ``tokens``' layout."""

    def encode_prefixed(self, prefix: torch.Tensor, suffix: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """Text features ``[G, K, D]`` of the G·K prompts ``cat(prefix[g], suffix[g, k])``.

        ``prefix`` ``[G, P, W]`` is shared by the K prompts of group g, ``suffix`` is ``[G, K, L - P, W]`` and
        ``tokens`` the K prompts' layout ``[K, L]`` (every prompt ends after P). Equals
        ``encode_token_embeddings`` of the concatenation (this default computes exactly that); causal text
        towers override it to run the shared prefix once per group instead of once per prompt.
        """
        n_group, n_cls = suffix.shape[:2]
        embeds = torch.cat([prefix.unsqueeze(1).expand(-1, n_cls, -1, -1), suffix], dim=2).flatten(0, 1)
        repeated = Tokens(ids=tokens.ids.repeat(n_group, 1), mask=tokens.mask.repeat(n_group, 1))
        return self.encode_token_embeddings(embeds, repeated).unflatten(0, (n_group, n_cls))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text features ``[K, D]`` of plain texts."""
        tokens = self.tokenize(texts)
        return self.encode_token_embeddings(self.token_embeddings(tokens.ids), tokens)

    @abc.abstractmethod
    def cache_key(self) -> dict:
        """What identifies this backbone's features: name, weights checksum, preprocessing."""
