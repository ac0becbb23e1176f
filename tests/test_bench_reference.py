"""The CoOp-style reference of benchmarks/bench_train.py against our trainer's step, at small size.

Same random-init tiny open_clip ViT, same context, same batch: the reference (per-step image encoding,
full 77-token text forward) and ``train_step`` of a ``PromptLearner`` on cached image features must give
the same loss and the same context gradient (relative difference below 1e-5 in float32), and the same
context after the SGD step. The benchmark itself runs end to end at this size (2 class counts, 1 repeat,
the larger one through the reference's chunked path) and reports equality, a speedup and FLOP counts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import open_clip
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = Path(__file__).parent / "fixtures" / "openclip" / "tiny-vit.json"
sys.path.insert(0, str(BENCH))

import bench_train  # noqa: E402
from common import random_clip  # noqa: E402

from deltaenergy.methods.train import train_step  # noqa: E402
from deltaenergy.prompts import PromptLearner  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return random_clip(str(TINY), tmp_path_factory.mktemp("ckpt"), seed=0)


def test_reference_and_train_step_agree(tiny):
    model, backbone = tiny
    names = open_clip.IMAGENET_CLASSNAMES[:37]  # several name lengths
    learner = PromptLearner(backbone, names, n_ctx=16, generator=torch.Generator().manual_seed(0))
    ctx0 = learner.ctx.detach().clone()
    reference = bench_train.CoOpReference(model, open_clip.get_tokenizer(TINY.stem), names, ctx0)
    assert reference.ids.shape == (37, 77) and reference.token_suffix.shape[1] == 77 - 17
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, backbone.image_size, backbone.image_size, generator=gen)
    labels = torch.randint(0, 37, (8,), generator=gen)
    feats = backbone.encode_images(images)[0]
    torch.testing.assert_close(feats, reference.image_features(images), atol=1e-6, rtol=0)

    loss = train_step(learner, bench_train.restart(learner, ctx0), {"kind": "coop"}, feats, labels, bench_train.TAU)[0]
    ref_loss = reference.step(images, labels, bench_train.restart(reference, ctx0))
    assert abs(loss - ref_loss) / abs(ref_loss) < 1e-5
    assert learner.ctx.grad.norm() > 0
    assert bench_train.rel_diff(learner.ctx.grad, reference.ctx.grad) < 1e-5
    assert bench_train.rel_diff(learner.ctx.detach(), reference.ctx.detach()) < 1e-5  # the same SGD step
    assert not torch.equal(learner.ctx.detach(), ctx0)

    one_graph_grad = reference.ctx.grad.clone()
    chunked_loss, extra = reference.text_step(feats, labels, bench_train.restart(reference, ctx0), chunk=10)
    assert extra > 0 and abs(chunked_loss - ref_loss) / abs(ref_loss) < 1e-6
    assert bench_train.rel_diff(reference.ctx.grad, one_graph_grad) < 1e-6  # chunked = one graph


def test_benchmark_runs_and_checks_at_small_size(tmp_path):
    args = bench_train.parser().parse_args(["--arch", str(TINY), "--k", "3", "40", "--batch", "4", "--repeats", "1",
                                            "--ref-chunk", "16", "--threads", "1", "--out", str(tmp_path)])
    result = bench_train.run(args)
    assert [r["K"] for r in result["rows"]] == [3, 40]
    for row in result["rows"]:
        assert row["equal"] and row["grad_rel_diff"] < 1e-5 and row["loss_rel_diff"] < 1e-5
        assert row["text_positions"]["reference"] == 77 * row["K"]
        assert row["text_positions"]["ours"] < row["text_positions"]["ours_padded_without_sharing"]
        assert 0 < row["flops"]["ours"] < row["flops"]["reference"]
        assert row["speedup"] > 0
    assert result["rows"][0]["reference_chunk"] is None and result["rows"][1]["reference_chunk"] == 16
    assert "| 40 |" in bench_train.table(result)


def test_benchmark_fails_loudly_when_results_differ(monkeypatch):
    monkeypatch.setattr(bench_train, "TAU", 0.02)  # only the reference reads the module constant through text_step
    original = bench_train.train_step
    monkeypatch.setattr(bench_train, "train_step", lambda learner, opt, method, feats, labels, tau, **kw:
                        original(learner, opt, method, feats, labels, 0.01, **kw))
    args = bench_train.parser().parse_args(["--arch", str(TINY), "--k", "3", "--batch", "4", "--repeats", "1",
                                            "--threads", "1", "--out", "-"])
    with pytest.raises(SystemExit, match="differ"):
        bench_train.run(args)
