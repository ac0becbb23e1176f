"""PromptLearner on both backbones: CoOp layouts against the equivalent plain texts, context options, errors.

A learner initialised from "a photo of a" must build, position by position, the token embeddings of the
text each layout stands for, and its features must equal ``encode_text`` of that text (and, on open_clip,
open_clip's own ``encode_text``).
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from deltaenergy.backbones import Backbone, Tokens, build_backbone
from deltaenergy.prompts import PLACEHOLDER, ConditionalPromptLearner, PromptLearner
from deltaenergy.provenance import sha256_file

TINY = Path(__file__).parent / "fixtures" / "openclip" / "tiny-vit.json"
NAMES = ["dog", "ankle boot", "T-shirt/top", "St. Bernard"]
EQUIVALENT = {  # the text each layout equals at initialisation from "a photo of a" (CoOp: half = n_ctx // 2)
    "end": "a photo of a {}.",
    "front": "{} a photo of a.",
    "middle": "a photo {} of a.",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-init tiny open_clip ViT, saved as a user's checkpoint and loaded through the backbone."""
    open_clip.add_model_config(TINY)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.create_model(TINY.stem).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model, build_backbone("openclip", arch=str(TINY), checkpoint=str(path), sha256=sha256_file(path))


@pytest.fixture(scope="module", params=["openclip", "standin-conse"])
def backbone(request, tiny):
    return tiny[1] if request.param == "openclip" else build_backbone("standin-conse")


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_init_from_phrase_reproduces_the_equivalent_text(backbone, position):
    texts = [EQUIVALENT[position].format(name) for name in NAMES]
    learner = PromptLearner(backbone, NAMES, ctx_init="a photo of a", class_token_position=position)
    assert learner.ctx.shape == (4, backbone.token_embeddings(torch.tensor([[0]])).shape[-1])
    reference = backbone.tokenize(texts)
    length = learner.tokens.ids.shape[1]
    assert length == int(reference.mask.sum(1).max())  # trimmed to the longest prompt
    assert torch.equal(learner.tokens.mask, reference.mask[:, :length])
    under_ctx = torch.zeros_like(learner.tokens.mask, dtype=torch.bool).scatter(1, learner.ctx_index, True)
    assert torch.equal(learner.tokens.ids != reference.ids[:, :length], under_ctx)  # placeholders differ, only
    assert torch.all(learner.tokens.ids[under_ctx] == backbone.tokenize([PLACEHOLDER]).ids[0, 1])
    with torch.no_grad():
        assert torch.equal(learner.prompt_embeddings(), backbone.token_embeddings(reference.ids)[:, :length])
        torch.testing.assert_close(learner(), backbone.encode_text(texts), atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_open_clip_encode_text_reference(tiny, position):
    model, bb = tiny
    texts = [EQUIVALENT[position].format(name) for name in NAMES]
    for class_specific in (False, True):
        learner = PromptLearner(
            bb, NAMES, ctx_init="a photo of a", class_token_position=position, class_specific=class_specific
        )
        with torch.no_grad():
            ref = model.encode_text(open_clip.get_tokenizer("tiny-vit")(texts), normalize=True)
            torch.testing.assert_close(learner(), ref, atol=1e-5, rtol=0)


def test_middle_with_odd_context_and_positions(tiny):
    _, bb = tiny
    learner = PromptLearner(bb, ["ankle boot"], ctx_init="a blurry photo of a", class_token_position="middle")
    assert learner.n_ctx == 5  # half = 2: "a blurry" before the name, "photo of a" after
    assert learner.ctx_index.tolist() == [[1, 2, 5, 6, 7]]  # "ankle boot" is 2 tokens
    with torch.no_grad():
        torch.testing.assert_close(learner(), bb.encode_text(["a blurry ankle boot photo of a."]), atol=1e-5, rtol=0)


def test_random_context_is_seeded_with_std_002(backbone):
    make = lambda seed, **kw: PromptLearner(  # noqa: E731
        backbone, NAMES, n_ctx=16, generator=torch.Generator().manual_seed(seed), **kw
    )
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(a.ctx, b.ctx) and not torch.equal(a.ctx, c.ctx)
    assert a.ctx.shape[0] == 16 and abs(a.ctx.std().item() - 0.02) < 0.002 and abs(a.ctx.mean().item()) < 0.002
    specific = make(0, class_specific=True)
    assert specific.ctx.shape == (len(NAMES), 16, a.ctx.shape[-1])
    assert specific().shape == (len(NAMES), backbone.embed_dim)


def test_gradients_reach_the_right_context(backbone):
    generic = PromptLearner(backbone, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(0))
    generic()[0].sum().backward()
    assert torch.all(generic.ctx.grad.abs().sum(-1) > 0) and torch.isfinite(generic.ctx.grad).all()
    specific = PromptLearner(backbone, NAMES, ctx_init="a photo of a", class_specific=True,
                             class_token_position="front")
    specific()[1].sum().backward()
    per_class = specific.ctx.grad.abs().sum(dim=(1, 2))
    assert per_class[1] > 0 and torch.all(per_class[[0, 2, 3]] == 0)
    assert not any(p.requires_grad for p in backbone.parameters())


def test_old_positional_arguments_still_work(tiny):
    _, bb = tiny
    learner = PromptLearner(bb, NAMES, 4, "a photo of a")
    assert learner.class_token_position == "end" and not learner.class_specific
    with torch.no_grad():
        torch.testing.assert_close(learner(), bb.encode_text([f"a photo of a {n}." for n in NAMES]), atol=1e-5, rtol=0)


def test_bad_options_and_class_names(tiny):
    _, bb = tiny
    with pytest.raises(ValueError, match="class_token_position: 'start'"):
        PromptLearner(bb, NAMES, class_token_position="start")
    with pytest.raises(ValueError, match="n_ctx: must be >= 1"):
        PromptLearner(bb, NAMES, n_ctx=0)
    too_long = "very " * 80 + "long dog"
    with pytest.raises(ValueError, match="very very.*context length 77.*shorten"):
        PromptLearner(bb, ["cat", too_long])
    fits_alone = "ab " * 73  # 75 tokens with start/end: fits alone, not with 4 context tokens and "."
    with pytest.raises(ValueError, match=r"does not fit with 4 context tokens.*ab ab.*lower prompt.n_ctx"):
        PromptLearner(bb, ["cat", fits_alone.strip()])


class WordLevel(Backbone):
    """A text-only stub whose tokenizer splits at spaces only, so "X." is one token (breaks front/middle)."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab: dict[str, int] = {}
        self.table = torch.nn.Embedding(64, 8)

    def tokenize(self, texts):
        rows = [[1] + [self.vocab.setdefault(w, len(self.vocab) + 3) for w in t.split()] + [2] for t in texts]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return Tokens(ids=ids, mask=(ids > 0).long())

    def token_embeddings(self, ids):
        return self.table(ids)

    def encode_token_embeddings(self, embeds, tokens):
        return torch.nn.functional.normalize((embeds * tokens.mask[..., None]).sum(1), dim=-1)

    preprocess = _encode_images = cache_key = None


def test_tokenizer_that_merges_the_name_with_the_context_is_refused():
    stub = WordLevel()
    assert PromptLearner(stub, ["ankle boot", "dog"], n_ctx=2).ctx_index.tolist() == [[1, 2], [1, 2]]
    merged = r"'ankle boot X X\.' are not those of 'ankle boot \.'.*class_token_position: end"
    with pytest.raises(ValueError, match=merged):
        PromptLearner(stub, ["ankle boot", "dog"], n_ctx=2, class_token_position="front")


def test_names_ending_in_punctuation_follow_the_equivalent_text(tiny):
    model, bb = tiny
    names = ["kite (bird of prey)", "boot.", "Jack-o'-lantern"]  # ")." and ".." merge into one BPE token
    for position in ("end", "middle", "front"):
        learner = PromptLearner(bb, names, ctx_init="a photo of a", class_token_position=position)
        texts = [EQUIVALENT[position].format(name) for name in names]
        with torch.no_grad():
            ref = model.encode_text(open_clip.get_tokenizer("tiny-vit")(texts), normalize=True)
            torch.testing.assert_close(learner(), ref, atol=1e-5, rtol=0)


# Shared-prefix encoding (OpenClipBackbone.encode_prefixed): the SOT and the context before the name run once,
# prompts run in buckets of equal length, the last block computes only the EOT rows. Compared in float64 with
# the plain full-sequence forward (``encode_token_embeddings``, itself checked against open_clip's
# ``encode_text`` above and in test_openclip_backbone.py) and with the base class's concatenating default.
MIXED = ["dog", "cat", "ankle boot", "T-shirt/top", "St. Bernard", "great white shark", "ox", "kite (bird of prey)"]


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("class_specific", [False, True])
def test_shared_prefix_equals_full_forward_values_and_gradients(tiny, position, class_specific, monkeypatch):
    _, bb = tiny
    monkeypatch.setattr(Backbone, "encode_prefixed", lambda *a: pytest.fail("took the concatenating fallback"))
    bb = bb.double()
    try:
        learner = PromptLearner(bb, MIXED, n_ctx=16, generator=torch.Generator().manual_seed(0),
                                class_token_position=position, class_specific=class_specific).double()
        assert len(set(learner.tokens.mask.sum(1).tolist())) >= 4  # several length buckets
        weights = torch.randn(len(MIXED), bb.embed_dim, generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64)
        fast = learner()
        (fast * weights).sum().backward()
        fast_grad, learner.ctx.grad = learner.ctx.grad, None
        full = bb.encode_token_embeddings(learner.prompt_embeddings(), learner.tokens)
        (full * weights).sum().backward()
        torch.testing.assert_close(fast, full, atol=1e-12, rtol=0)
        torch.testing.assert_close(fast_grad, learner.ctx.grad, atol=1e-12, rtol=1e-10)
        assert fast_grad.abs().sum() > 0
    finally:
        bb.float()


def test_shared_prefix_groups_equal_the_concatenating_default(tiny):
    """CoCoOp's image-conditioned prompts: one prefix per image (group), K suffixes each."""
    _, bb = tiny
    learner = ConditionalPromptLearner(bb, MIXED, n_ctx=4, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(2)
    feats = torch.nn.functional.normalize(torch.randn(3, bb.embed_dim, generator=gen), dim=-1)
    with torch.no_grad():
        shift = learner.meta_net(feats)
        embeds = learner.embed_context(learner.class_context().unsqueeze(0) + shift[:, None, None, :])
        shared = learner.n_shared
        default = Backbone.encode_prefixed(bb, embeds[:, 0, :shared], embeds[:, :, shared:], learner.tokens)
        per_image = torch.stack([bb.encode_token_embeddings(e, learner.tokens) for e in embeds])
        out = learner(feats)
    assert out.shape == (3, len(MIXED), bb.embed_dim)
    torch.testing.assert_close(default, per_image, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, per_image, atol=1e-5, rtol=0)


def test_shared_prefix_matches_open_clip_encode_text_with_many_lengths(tiny):
    model, bb = tiny
    learner = PromptLearner(bb, MIXED, ctx_init="a photo of a")
    with torch.no_grad():
        ref = model.encode_text(open_clip.get_tokenizer("tiny-vit")([f"a photo of a {n}." for n in MIXED]),
                                normalize=True)
        torch.testing.assert_close(learner(), ref, atol=1e-5, rtol=0)
