"""LoCoOp's loss against a per-patch loop reference; CoCoOp's learner against CoOp's and a per-image loop;
both methods train on the stand-in, and CoCoOp (context + meta-net) resumes exactly."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from deltaenergy.evaluate import score_table
from deltaenergy.methods.losses import LOSSES, locoop_loss, ood_patch_entropy
from deltaenergy.methods.train import METHODS, Method, build_learner, train_learner
from deltaenergy.prompts import (
    ConditionalPromptLearner,
    PromptLearner,
    image_conditioned_sims,
    image_conditioned_text,
    mixed_precision,
)

CLASSES = ["t-shirt", "trouser", "pullover", "dress"]
CFG = {"epochs": 4, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1,
       "warmup_lr": 1e-5, "tau": 0.05}
PROMPT = {"n_ctx": 2, "ctx_init": None}
LOCOOP = {"kind": "locoop", "lambda": 0.25, "top_k": 2}


# --- LoCoOp ----------------------------------------------------------------------------------------
def _ref_ood(local_sims, labels, tau, top_k):
    """Per image, per patch: the authors' rule (label not in the top-k by probability), exact entropy."""
    entropies, selected = [], np.zeros(local_sims.shape[:2], dtype=bool)
    for b in range(local_sims.shape[0]):
        for p in range(local_sims.shape[1]):
            s = local_sims[b, p] / tau
            prob = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            if labels[b] not in np.argsort(-prob)[:top_k]:
                selected[b, p] = True
                entropies.append(-(prob * np.log(prob)).sum())
    return (-np.mean(entropies) if entropies else 0.0), selected


def _local_data(b=5, p=6, k=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, d, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    return unit(b), unit(b, p), unit(k), torch.randint(0, k, (b,), generator=g)


@pytest.mark.parametrize("tau", [0.01, 1.0])
@pytest.mark.parametrize("top_k", [1, 3, 6])
def test_ood_patch_entropy_matches_per_patch_reference(tau, top_k):
    _, local, text, labels = _local_data()
    sims = local @ text.T
    term, selected = ood_patch_entropy(sims, labels, tau, top_k)
    ref, ref_selected = _ref_ood(sims.numpy(), labels.numpy(), tau, top_k)
    assert 0 < ref_selected.sum() < ref_selected.size  # a mixed selection
    np.testing.assert_array_equal(selected.numpy(), ref_selected)
    assert float(term) == pytest.approx(ref, rel=1e-10)


def test_ood_patch_entropy_when_no_patch_or_every_patch_is_selected():
    labels = torch.tensor([0, 2, 1])
    base = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    onehot = F.one_hot(labels, 5)[:, None, :].double()
    top = base + 2 * onehot  # the label leads every patch: never selected
    term, selected = ood_patch_entropy(top, labels, 0.1, 1)
    assert not selected.any() and term.item() == 0.0
    term.backward()
    assert torch.all(base.grad == 0)
    bottom = base - 2 * onehot  # the label trails every patch: selected by any top_k <= K - 1
    term, selected = ood_patch_entropy(bottom, labels, 0.1, 4)
    ref, ref_selected = _ref_ood(bottom.detach().numpy(), labels.numpy(), 0.1, 4)
    assert selected.all() and ref_selected.all()
    assert term.item() == pytest.approx(ref, rel=1e-10)


def test_locoop_loss_is_ce_plus_lambda_times_the_ood_term():
    feats, local, text, labels = _local_data()
    loss, terms = locoop_loss(feats, labels, text, 0.05, {"lambda": 0.5, "top_k": 3}, local=local)
    ce = F.cross_entropy(feats @ text.T / 0.05, labels)
    ref, selected = _ref_ood((local @ text.T).numpy(), labels.numpy(), 0.05, 3)
    assert float(loss) == pytest.approx(float(ce) + 0.5 * ref, rel=1e-10)
    assert terms["ood_entropy"] == pytest.approx(ref) and terms["ood_fraction"] == pytest.approx(selected.mean())
    default, _ = locoop_loss(feats, labels, text, 0.05, {"top_k": 3}, local=local)  # lambda defaults to 0.25
    assert float(default) == pytest.approx(float(ce) + 0.25 * ref, rel=1e-10)
    assert LOSSES["locoop"] is locoop_loss


@pytest.mark.parametrize("top_k", [0, 7, 200, 2.0, True])
def test_locoop_top_k_must_be_below_the_class_count(top_k):
    feats, local, text, labels = _local_data()
    with pytest.raises(ValueError, match=r"methods.<method>.top_k = .* \[1, 6\] for K = 7"):
        locoop_loss(feats, labels, text, 0.05, {"top_k": top_k}, local=local)
    with pytest.raises(ValueError, match="locoop: needs local"):
        locoop_loss(feats, labels, text, 0.05, {"top_k": 3})


# --- CoCoOp learner ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone():
    from deltaenergy.backbones import build_backbone

    return build_backbone("standin-conse")


@pytest.fixture(scope="module")
def data():
    """8 unit features near 4 class centres, labels 0..3 twice, 16 local features each."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 384, generator=g), dim=-1)
    labels = torch.arange(8) % 4
    feats = F.normalize(centres[labels] + 0.5 * F.normalize(torch.randn(8, 384, generator=g), dim=-1), dim=-1)
    local = F.normalize(feats[:, None] + 0.15 * torch.randn(8, 16, 384, generator=g), dim=-1)
    return feats, labels, local


def _cocoop(backbone, seed=0, **kw):
    return ConditionalPromptLearner(backbone, CLASSES, n_ctx=2, generator=torch.Generator().manual_seed(seed), **kw)


def test_meta_net_shape_and_seeded_init(backbone):
    a, b, c = _cocoop(backbone), _cocoop(backbone), _cocoop(backbone, seed=1)
    assert [tuple(p.shape) for p in a.learned_parameters().values()] == [(2, 384), (24, 384), (24,), (384, 24), (384,)]
    assert all(torch.equal(p, q) for p, q in zip(a.learned_parameters().values(), b.learned_parameters().values()))
    assert not torch.equal(a.meta_net[0].weight, c.meta_net[0].weight)
    bound = 1 / math.sqrt(384)
    assert a.meta_net[0].weight.abs().max() <= bound and a.meta_net[0].weight.std() > 0.5 * bound / math.sqrt(3)
    assert torch.equal(a.ctx, PromptLearner(backbone, CLASSES, 2, generator=torch.Generator().manual_seed(0)).ctx)
    assert _cocoop(backbone, hidden_ratio=4).meta_net[0].out_features == 96
    with pytest.raises(ValueError, match="hidden_ratio: must be an integer in"):
        _cocoop(backbone, hidden_ratio=0)


def test_zero_meta_net_gives_coop_features_for_every_image(backbone, data):
    feats = data[0]
    learner = _cocoop(backbone)
    with torch.no_grad():
        learner.meta_net[2].weight.zero_()
        learner.meta_net[2].bias.zero_()
        plain = PromptLearner(backbone, CLASSES, 2, generator=torch.Generator().manual_seed(0))()
        per_image = learner(feats)
    assert per_image.shape == (8, 4, 384)
    torch.testing.assert_close(per_image, plain.expand(8, -1, -1), atol=1e-5, rtol=0)


def test_batched_forward_equals_per_image_loop_and_sims(backbone, data):
    feats = data[0][:5]
    learner = _cocoop(backbone)
    with torch.no_grad():
        batched = learner(feats)
        loop = torch.stack([learner(feats[i : i + 1])[0] for i in range(5)])
        torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)
        assert not torch.allclose(batched[0], batched[1], atol=1e-4)  # the prompts do depend on the image
        ref_sims = torch.stack([loop[i] @ feats[i] for i in range(5)])
    torch.testing.assert_close(image_conditioned_sims(learner, feats, batch_size=2), ref_sims, atol=1e-5, rtol=0)
    torch.testing.assert_close(image_conditioned_text(learner, feats, batch_size=3), loop, atol=1e-5, rtol=0)
    assert image_conditioned_sims(learner, feats[:0]).shape == (0, 4)


def test_gradients_reach_context_and_meta_net(backbone, data):
    feats, labels, _ = data
    learner = _cocoop(backbone)
    loss, _ = LOSSES["cocoop"](feats[:4], labels[:4], learner(feats[:4]), 0.05, {})
    loss.backward()
    for name, p in learner.learned_parameters().items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert not any(p.requires_grad for p in backbone.parameters())


def test_learned_state_round_trip_and_mismatch(backbone):
    a, b = _cocoop(backbone), _cocoop(backbone, seed=3)
    b.load_learned_state(a.learned_state())
    assert all(torch.equal(p, q) for p, q in zip(a.learned_parameters().values(), b.learned_parameters().values()))
    plain = PromptLearner(backbone, CLASSES, 2)
    with pytest.raises(ValueError, match="learns \\['ctx'\\]; it was trained with another method kind"):
        plain.load_learned_state(a.learned_state())
    with pytest.raises(ValueError, match="'ctx': shape"):
        PromptLearner(backbone, CLASSES, 3).load_learned_state(plain.learned_state())


def test_score_table_takes_per_image_text(backbone, data):
    feats, _, local = data
    manifest = pd.DataFrame({"path": [f"{i}.png" for i in range(8)], "dataset": "d", "split": "test", "role": "id",
                             "label": np.arange(8) % 4})
    scores = {"msp": {"score": "msp", "tau": 0.01}, "glmcm": {"score": "glmcm", "tau": 1.0, "lam": 1.0}}
    cached = {"global": feats, "local": local}
    text = PromptLearner(backbone, CLASSES, 2, generator=torch.Generator().manual_seed(0))().detach()
    by_matrix = score_table(cached, text, manifest, scores, chunk=3)
    by_function = score_table(cached, lambda f: text.expand(len(f), -1, -1), manifest, scores, chunk=3)
    pd.testing.assert_frame_equal(by_matrix, by_function, rtol=1e-6)
    learner = _cocoop(backbone)
    table, returned = score_table(cached, lambda f: image_conditioned_text(learner, f, 2), manifest, scores, chunk=5,
                                  return_sims=True)
    sims = image_conditioned_sims(learner, feats, 4)
    # the similarities the table was scored from, in its row order (what score_run's c sweep reuses)
    torch.testing.assert_close(returned, sims, rtol=1e-6, atol=1e-7)
    pd.testing.assert_frame_equal(table, score_table(cached, lambda f: image_conditioned_text(learner, f, 2), manifest,
                                                     scores, chunk=5))
    np.testing.assert_array_equal(table["pred"].to_numpy(), sims.argmax(-1).numpy())
    np.testing.assert_allclose(table["msp"].to_numpy(), (sims / 0.01).softmax(-1).amax(-1).double().numpy(), rtol=1e-5)


def test_mixed_precision_is_a_no_op_on_cpu():
    with mixed_precision("cpu"), mixed_precision(torch.device("cpu"), False):
        assert not torch.is_autocast_enabled("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on CPU-only machines
        assert isinstance(mixed_precision("cuda"), torch.autocast)
        assert not isinstance(mixed_precision("cuda", enabled=False), torch.autocast)


# --- training --------------------------------------------------------------------------------------
def _full_ce(learner, feats, labels, conditional):
    with torch.no_grad():
        sims = image_conditioned_sims(learner, feats) if conditional else feats @ learner().T
    return float(F.cross_entropy(sims / CFG["tau"], labels))


@pytest.fixture(scope="module")
def cocoop_run(backbone, data, tmp_path_factory):
    feats, labels, _ = data
    ckpt = tmp_path_factory.mktemp("cocoop") / "ref.pt"
    learner, log = train_learner(backbone, CLASSES, feats, labels, {"kind": "cocoop"}, CFG, PROMPT, 1, ckpt,
                                 progress=False, device="cpu")
    return learner, log, ckpt


def test_both_methods_lower_the_training_cross_entropy(backbone, data, cocoop_run, tmp_path):
    feats, labels, local = data
    learner, log, ckpt = cocoop_run
    untrained = build_learner(backbone, CLASSES, {"kind": "cocoop"}, PROMPT, 1)
    assert _full_ce(learner, feats, labels, True) < 0.8 * _full_ce(untrained, feats, labels, True)
    assert len(log) == CFG["epochs"] * 2 and set(log[0]) == {"epoch", "step", "lr", "loss", "acc", "ce"}
    saved = torch.load(ckpt, weights_only=True)
    assert list(saved["learned"]) == list(learner.learned_parameters())
    assert len(saved["optimizer"]["state"]) == 5  # momentum of the context and the 4 meta-net tensors

    trained, log = train_learner(backbone, CLASSES, feats, labels, LOCOOP, CFG, PROMPT, 1, tmp_path / "l.pt",
                                 progress=False, local_feats=local)
    before = _full_ce(build_learner(backbone, CLASSES, LOCOOP, PROMPT, 1), feats, labels, False)
    assert _full_ce(trained, feats, labels, False) < 0.8 * before
    assert all(0 <= row["ood_fraction"] <= 1 and row["ood_entropy"] <= 0 for row in log)
    assert any(row["ood_fraction"] > 0 for row in log)


def test_a_method_train_entry_overrides_the_train_config(backbone, data, tmp_path):
    feats, labels, _ = data
    method = {"kind": "coop", "train": {"epochs": 2, "lr": 0.5}}
    _, log = train_learner(backbone, CLASSES, feats, labels, method, CFG, PROMPT, 1, tmp_path / "o.pt", progress=False)
    assert CFG["epochs"] != 2 and {row["epoch"] for row in log} == {0, 1}
    assert log[-1]["lr"] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_method_errors(backbone, data, tmp_path):
    feats, labels, _ = data
    with pytest.raises(ValueError, match="locoop: needs local"):
        train_learner(backbone, CLASSES, feats, labels, LOCOOP, CFG, PROMPT, 1, tmp_path / "a.pt", progress=False)
    with pytest.raises(ValueError, match=r"kind: 'clip' is not one of \['cocoop', 'coop', 'ebm', 'locoop'\]"):
        train_learner(backbone, CLASSES, feats, labels, {"kind": "clip"}, CFG, PROMPT, 1, tmp_path / "c.pt")
    assert not any(tmp_path.iterdir())


class Interrupted(RuntimeError):
    pass


def test_cocoop_resume_after_an_interruption_is_exact(backbone, data, cocoop_run, tmp_path, monkeypatch, capsys):
    feats, labels, _ = data
    ref, ref_log, _ = cocoop_run
    calls, original = [], METHODS["cocoop"].loss

    def failing(*args, **kw):  # dies in the middle of epoch 2 (step 5 of 8), after 2 saved epochs
        calls.append(1)
        if len(calls) == 6:
            raise Interrupted
        return original(*args, **kw)

    ckpt = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        patch.setitem(METHODS, "cocoop", Method(failing, conditional=True))
        with pytest.raises(Interrupted):
            train_learner(backbone, CLASSES, feats, labels, {"kind": "cocoop"}, CFG, PROMPT, 1, ckpt, progress=False,
                          device="cpu")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    learner, log = train_learner(backbone, CLASSES, feats, labels, {"kind": "cocoop"}, CFG, PROMPT, 1, ckpt,
                                 progress=False, device="cpu")
    assert "resuming from" in capsys.readouterr().out
    assert log == ref_log
    for name, p in ref.learned_parameters().items():
        assert torch.equal(learner.learned_parameters()[name], p), name
