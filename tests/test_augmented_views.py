"""Cached augmented views: the crop/flip is a pure function of its seed, every view is encoded exactly
once and equals encoding the augmented image directly, and training on views is deterministic and uses
exactly the cached rows."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from deltaenergy.backbones import build_backbone
from deltaenergy.features import augment_view, extract_views, view_positions, view_seed
from deltaenergy.methods.train import train_learner

CFG = {"epochs": 3, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1,
       "warmup_lr": 1e-5, "tau": 0.05}
PROMPT = {"n_ctx": 2, "ctx_init": None}
CLASSES = ["t-shirt", "trouser", "pullover", "dress"]


def _image(seed: int, size=(40, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def test_augment_view_is_a_function_of_its_seed():
    image = _image(0, (48, 32))
    a, b, c = augment_view(image, 7, (0.08, 1.0)), augment_view(image, 7, (0.08, 1.0)), augment_view(image, 8, (0.08, 1.0))
    assert a.size == image.size
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    assert view_seed(0, 5, 1) == view_seed(0, 5, 1) != view_seed(0, 5, 2) != view_seed(1, 5, 1)


def test_full_scale_square_crop_is_the_image_or_its_mirror():
    image = _image(1)
    pixels, mirrored = np.asarray(image), np.asarray(image)[:, ::-1]
    outcomes = set()
    for seed in range(40):
        view = np.asarray(augment_view(image, seed, (1.0, 1.0)))
        is_same, is_mirror = np.array_equal(view, pixels), np.array_equal(view, mirrored)
        assert is_same or is_mirror
        outcomes.add(is_mirror)
    assert outcomes == {False, True}  # both flip outcomes occur


def test_views_are_encoded_once_and_equal_direct_encoding(tmp_path):
    bb = build_backbone("standin-conse", image_size=64)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        _image(10 + i).save(paths[-1])
    manifest = pd.DataFrame({"path": paths, "label": [0, 1, 0, 1, 0], "split": ["train", "test", "train", "train", "val"]})
    feats = extract_views(bb, manifest, views=3, data_seed=4, scale=(0.3, 1.0), batch_size=4)
    assert feats["global"].shape == (3, 3, bb.embed_dim) and feats["local"].shape[:2] == (3, 3)
    assert feats["rows"].tolist() == [0, 2, 3]
    assert bb.image_forward_count == 3 * 3
    with torch.no_grad():
        direct = bb.encode_images(bb.preprocess(augment_view(Image.open(paths[2]), view_seed(4, 2, 1), (0.3, 1.0)))[None])[0]
    np.testing.assert_allclose(feats["global"][1, 1], direct[0].numpy(), atol=1e-5)


def test_training_on_views_is_deterministic_and_uses_the_views(tmp_path):
    bb = build_backbone("standin-conse")
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(8, 384, generator=gen), dim=-1)
    labels = torch.arange(8) % 4
    noisy = torch.nn.functional.normalize(feats[:, None] + 0.3 * torch.randn(8, 2, 384, generator=gen), dim=-1)

    def run(name, views):
        learner, _ = train_learner(bb, CLASSES, feats, labels, {"kind": "coop"}, CFG, PROMPT, 1, tmp_path / name,
                                   progress=False, views=views)
        return learner.ctx.detach()

    plain = run("plain.pt", None)
    assert torch.equal(run("same.pt", {"global": feats[:, None]}), plain)  # one view = the plain features
    augmented = run("a.pt", {"global": noisy})
    assert torch.equal(run("b.pt", {"global": noisy}), augmented) and not torch.equal(augmented, plain)
    with pytest.raises(ValueError, match=r"views: expected 'global' \[8, V, D\]"):
        run("c.pt", {"global": noisy[:4]})


def test_view_positions_refuse_rows_without_views():
    rows = torch.tensor([0, 2, 3, 7])
    assert view_positions(rows, torch.tensor([7, 0, 3])).tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match=r"manifest rows \[1, 9\] are not training images"):
        view_positions(rows, torch.tensor([1, 2, 9]))
