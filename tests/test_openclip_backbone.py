"""The open_clip backbone on a tiny random-init ViT saved to a local checkpoint (the user's code path).

References: open_clip's own ``encode_image`` / ``encode_text`` / tokenizer / eval transform, GL-MCM's
local-feature code (re-written below in its own layout), and a full 77-token text forward.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import QuickGELU
from PIL import Image

from deltaenergy.backbones import BACKBONES, build_backbone
from deltaenergy.backbones.openclip import OpenClipBackbone, cached_pretrained
from deltaenergy.provenance import sha256_file

TINY = Path(__file__).parent / "fixtures" / "openclip" / "tiny-vit.json"


def _tiny_model(seed: int, config: Path = TINY, **kwargs) -> torch.nn.Module:
    """open_clip's random init of ``config``, seeded without touching the global RNG state."""
    open_clip.add_model_config(config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return open_clip.create_model(config.stem, **kwargs).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """The reference model and its state dict saved as a user's checkpoint."""
    model = _tiny_model(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def bb(saved) -> OpenClipBackbone:
    _, path = saved
    return build_backbone("openclip", arch=str(TINY), checkpoint=str(path), sha256=sha256_file(path))


def _images(seed: int, n: int, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registered_frozen_and_cache_key(bb, saved):
    model, path = saved
    assert BACKBONES["openclip"] is OpenClipBackbone
    assert (bb.arch, bb.embed_dim, bb.image_size, bb.context_length) == ("tiny-vit", 32, 64, 77)
    reloaded = bb.model.state_dict()
    assert all(torch.equal(v, reloaded[k]) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in bb.parameters())
    key = bb.cache_key()
    assert key["weights_sha256"] == sha256_file(path) and key["quick_gelu"] is False
    assert key["open_clip"] == f"open_clip_torch=={open_clip.__version__}" and key["pretrained"] is None
    assert "0x" not in key["preprocess"] and "Resize(size=64" in key["preprocess"] and "0.26862954" in key["preprocess"]
    assert json.dumps(key) == json.dumps(bb.cache_key())  # deterministic, JSON-serialisable


def test_global_features_match_encode_image_and_count(bb, saved):
    model, _ = saved
    x = _images(0, 5)
    before = bb.image_forward_count
    glob, local = bb.encode_images(x)
    with torch.no_grad():
        ref = F.normalize(model.encode_image(x), dim=-1)
    torch.testing.assert_close(glob, ref, atol=1e-5, rtol=0)
    assert glob.shape == (5, 32) and local.shape == (5, 16, 32)  # 64 px / 16 px patches = 4 x 4
    torch.testing.assert_close(local.norm(dim=-1), torch.ones(5, 16))
    assert bb.image_forward_count == before + 5


def _glmcm_reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GL-MCM's ``ResidualAttentionBlock.forward`` value path (their LND code), then ln_post, [1:], proj."""
    visual = model.visual
    block = visual.transformer.resblocks[-1]
    seen = {}
    handle = block.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model.encode_image(x)
        handle.remove()
        h = seen["x"].permute(1, 0, 2)  # NLD -> LND, as in GL-MCM
        y = block.ln_1(h).permute(1, 0, 2)
        y = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias)
        n, length, c = y.shape
        y = y.view(n, length, 3, c // 3).permute(2, 0, 1, 3).reshape(3 * n, length, c // 3)
        y = F.linear(y, block.attn.out_proj.weight, block.attn.out_proj.bias)
        _, _, v = y.tensor_split(3, dim=0)
        v = v.permute(1, 0, 2) + h
        v = v + block.mlp(block.ln_2(v))
        v = visual.ln_post(v.permute(1, 0, 2))[:, 1:]
        return F.normalize(v @ visual.proj, dim=-1)


def test_local_features_follow_glmcm(bb, saved):
    model, _ = saved
    x = _images(1, 3)
    _, local = bb.encode_images(x)
    torch.testing.assert_close(local, _glmcm_reference(model, x), atol=1e-5, rtol=0)
    with torch.no_grad():  # not the plain last-layer patch tokens
        tokens = model.visual.ln_post(model.visual.transformer(model.visual._embeds(x)))[:, 1:] @ model.visual.proj
    assert (local - F.normalize(tokens, dim=-1)).abs().max() > 1e-2


def test_image_size_option_resizes_position_grid(saved):
    _, path = saved
    big = OpenClipBackbone(str(TINY), checkpoint=str(path), sha256=sha256_file(path), image_size=96)
    glob, local = big.encode_images(_images(2, 2, size=96))
    assert big.image_size == 96 and glob.shape == (2, 32) and local.shape == (2, 36, 32)
    assert big.cache_key()["image_size"] == 96 and "Resize(size=96" in big.cache_key()["preprocess"]


def test_preprocess_is_open_clip_eval_transform(bb, saved):
    model, _ = saved
    reference = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    torch.testing.assert_close(bb.preprocess(rgb), reference(rgb))
    assert bb.preprocess(rgb).shape == (3, 64, 64)
    clear = Image.new("RGBA", (80, 80), (255, 0, 0, 0))  # transparent -> white, as data.images does
    torch.testing.assert_close(bb.preprocess(clear), reference(Image.new("RGB", (80, 80), (255, 255, 255))))


def test_tokenize_and_encode_text_match_open_clip(bb, saved):
    model, _ = saved
    texts = ["a photo of a dog.", "x", "Hello, world! 123", "an ankle boot"]
    tokens = bb.tokenize(texts)
    reference_ids = open_clip.get_tokenizer("tiny-vit")(texts)
    assert torch.equal(tokens.ids, reference_ids)
    eot = reference_ids.argmax(dim=1)
    assert torch.equal(tokens.mask, (torch.arange(77) <= eot[:, None]).long())
    with torch.no_grad():
        ref = model.encode_text(reference_ids, normalize=True)
        torch.testing.assert_close(bb.encode_text(texts), ref, atol=1e-6, rtol=0)


def _full_forward(model: torch.nn.Module, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """CLIP.encode_text on input embeddings, all 77 positions (open_clip's modules, pooled at argmax id)."""
    x = model.transformer(embeds + model.positional_embedding, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(x.shape[0]), ids.argmax(dim=1)]
    return F.normalize(x @ model.text_projection, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_truncated_text_forward_equals_full_forward(saved, dtype):
    """Exact in float64 (1e-12); in float32 within roundoff: values 1e-6, gradients 1e-5 of their largest."""
    model, path = saved
    model = copy.deepcopy(model).to(dtype)
    bb = OpenClipBackbone(str(TINY), checkpoint=str(path), sha256=sha256_file(path)).to(dtype)
    tokens = bb.tokenize(["a photo of a small dog.", "cat", "a blurry photo of the big ankle boot."])
    noise = torch.randn(3, 77, 64, generator=torch.Generator().manual_seed(3), dtype=dtype) * 0.02
    base = bb.token_embeddings(tokens.ids) + noise
    weights = torch.randn(3, 32, generator=torch.Generator().manual_seed(4), dtype=dtype)
    lengths = []
    hook = bb.model.transformer.register_forward_pre_hook(lambda mod, args: lengths.append(args[0].shape[1]))
    try:
        short_in = base.clone().requires_grad_(True)
        short = bb.encode_token_embeddings(short_in, tokens)
    finally:
        hook.remove()
    assert lengths == [int(tokens.mask.sum(1).max())] and lengths[0] < 20  # really truncated
    full_in = base.clone().requires_grad_(True)
    full = _full_forward(model, full_in, tokens.ids)
    (short * weights).sum().backward()
    (full * weights).sum().backward()
    scale = full_in.grad.abs().max()
    exact = dtype == torch.float64
    torch.testing.assert_close(short, full, atol=1e-12 if exact else 1e-6, rtol=0)
    torch.testing.assert_close(short_in.grad / scale, full_in.grad / scale, atol=1e-12 if exact else 1e-5, rtol=0)
    beyond = ~tokens.mask.bool()
    assert torch.all(short_in.grad[beyond] == 0) and torch.all(full_in.grad[beyond] == 0)
    assert torch.all(short_in.grad[tokens.mask.bool()].abs().sum(-1) > 0)
    with pytest.raises(ValueError, match="do not match"):
        bb.encode_token_embeddings(base[:, :-1], tokens)


def test_too_long_text_raises_naming_it(bb):
    long_text = "an extremely long class name " * 20
    assert open_clip.get_tokenizer("tiny-vit")([long_text])[0, -1] == 49407  # open_clip truncates silently
    with pytest.raises(ValueError, match="an extremely long class name.*context length 77.*shorten it"):
        bb.tokenize(["ok", long_text])


def test_sha256_mismatch_and_missing(saved):
    _, path = saved
    wrong = "0" * 64
    with pytest.raises(ValueError, match=rf"{path.name} has sha256 {sha256_file(path)}, expected {wrong}.*re-fetch"):
        OpenClipBackbone(str(TINY), checkpoint=str(path), sha256=wrong)
    with pytest.raises(ValueError, match=rf"backbone.sha256: required.*set backbone.sha256: {sha256_file(path)}"):
        OpenClipBackbone(str(TINY), checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        OpenClipBackbone(str(TINY), checkpoint=str(path.parent / "nothere.pt"), sha256=wrong)


def test_checkpoint_formats_load_the_same_weights(saved, tmp_path):
    """safetensors, and a training checkpoint ({"state_dict": ...} with DDP's "module." prefix)."""
    from safetensors.torch import save_file

    model, _ = saved
    state = model.state_dict()
    wrapped = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    safe = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
    for path in (wrapped, safe):
        loaded = OpenClipBackbone(str(TINY), checkpoint=str(path), sha256=sha256_file(path)).model.state_dict()
        assert all(torch.equal(v, loaded[k]) for k, v in state.items())
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt is not a state dict of tensors"):
        OpenClipBackbone(str(TINY), checkpoint=str(tmp_path / "list.pt"), sha256=sha256_file(tmp_path / "list.pt"))


def test_unknown_arch_and_tag_and_no_weights():
    with pytest.raises(ValueError, match=r"'ViT-B-61'.*ViT-B-16"):
        OpenClipBackbone("ViT-B-61", pretrained="openai")
    with pytest.raises(ValueError, match=r"no tag 'opnai' for ViT-B-16; use one of \[.*'openai'"):
        OpenClipBackbone("ViT-B-16", pretrained="opnai")
    with pytest.raises(ValueError, match="random weights are never used"):
        OpenClipBackbone(str(TINY))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_quickgelu_refused_for_openai_weights(saved, tmp_path):
    model, path = saved
    sha = sha256_file(path)
    fix = "force_quick_gelu: true"
    with pytest.raises(ValueError, match=rf"backbone.arch: ViT-B-16-quickgelu or backbone.{fix}"):
        OpenClipBackbone("ViT-B-16", pretrained="openai")  # refused before any file is looked for
    with pytest.raises(ValueError, match="trained with GELU.*force_quick_gelu: false"):
        OpenClipBackbone("ViT-B-16", pretrained="laion2b_s34b_b88k", force_quick_gelu=True)
    with pytest.raises(ValueError, match=rf"backbone.openai: true.*{fix}"):
        OpenClipBackbone(str(TINY), checkpoint=str(path), sha256=sha, openai=True)
    named = tmp_path / "tiny-openai.pt"
    named.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=rf"contains 'openai'.*{fix}.*backbone.openai: false"):
        OpenClipBackbone(str(TINY), checkpoint=str(named), sha256=sha)
    assert OpenClipBackbone(str(TINY), checkpoint=str(named), sha256=sha, openai=False).quick_gelu is False

    archive = tmp_path / "tiny-jit.pt"
    torch.jit.script(_tiny_model(0, quick_gelu=True)).save(str(archive))  # OpenAI's release format
    with pytest.raises(ValueError, match=rf"TorchScript archive.*{fix}"):
        OpenClipBackbone(str(TINY), checkpoint=str(archive), sha256=sha256_file(archive))
    quick = OpenClipBackbone(str(TINY), checkpoint=str(archive), sha256=sha256_file(archive), force_quick_gelu=True)
    assert quick.cache_key()["quick_gelu"] is True
    assert isinstance(quick.model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    reference = _tiny_model(1, quick_gelu=True)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        texts = ["a photo of a dog."]
        ref = reference.encode_text(open_clip.get_tokenizer("tiny-vit")(texts), normalize=True)
        torch.testing.assert_close(quick.encode_text(texts), ref, atol=1e-6, rtol=0)
        gelu = model.encode_text(quick.tokenize(texts).ids, normalize=True)
        assert (quick.encode_text(texts) - gelu).abs().max() > 1e-4  # the activation matters


def test_pretrained_tag_resolves_from_local_cache_only(tmp_path):
    missing = r"ViT-B-16-quickgelu/openai are not in the local cache.*fetch_pretrained"
    with pytest.raises(FileNotFoundError, match=missing):
        OpenClipBackbone("ViT-B-16-quickgelu", pretrained="openai", cache_dir=str(tmp_path))
    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    weights = repo / "snapshots" / "abc123" / "open_clip_pytorch_model.bin"
    weights.write_bytes(b"weights")
    assert cached_pretrained("ViT-B-16-quickgelu", "openai", str(tmp_path)) == weights
    with pytest.raises(ValueError, match="sha256"):  # the tag's file is checked against a given sha256 too
        OpenClipBackbone("ViT-B-16-quickgelu", pretrained="openai", cache_dir=str(tmp_path), sha256="0" * 64)


def test_arch_json_custom_text_tower_and_shape_mismatch(saved, tmp_path):
    model, path = saved
    cfg = json.loads(TINY.read_text())
    custom = tmp_path / "tiny-vit-customtext.json"
    custom.write_text(json.dumps({**cfg, "custom_text": True}))
    bb2 = OpenClipBackbone(str(custom), checkpoint=str(path), sha256=sha256_file(path))  # CLIP-format state dict
    assert isinstance(bb2.model, open_clip.CustomTextCLIP)
    texts = ["a photo of a dog.", "a cat"]
    with torch.no_grad():
        ref = model.encode_text(open_clip.get_tokenizer("tiny-vit")(texts), normalize=True)
        torch.testing.assert_close(bb2.encode_text(texts), ref, atol=1e-6, rtol=0)

    wider = tmp_path / "tiny-vit-wide.json"
    wider.write_text(json.dumps({**cfg, "embed_dim": 48}))
    with pytest.raises(ValueError, match=rf"{path.name} does not fit the architecture tiny-vit-wide.*backbone.arch"):
        OpenClipBackbone(str(wider), checkpoint=str(path), sha256=sha256_file(path))


def test_non_vit_needs_local_features_off():
    with pytest.raises(ValueError, match="RN50-quickgelu has no ViT image tower.*local_features: false"):
        OpenClipBackbone("RN50-quickgelu", pretrained="openai")
    with pytest.raises(ValueError, match="Hugging Face / SigLIP"):
        OpenClipBackbone("ViT-B-16-SigLIP", pretrained="webli")


def test_train_flag_keeps_model_in_eval(bb):
    x = _images(5, 2)
    first = bb.encode_images(x)
    bb.train()
    try:
        assert bb.training and not bb.model.training
        second = bb.encode_images(x)
    finally:
        bb.eval()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
