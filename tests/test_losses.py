"""EBM's masked energy change against a per-sample NumPy reference; CoOp = plain cross-entropy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deltaenergy.methods.losses import coop_loss, ebm_loss, masked_energy_change


def _ref_delta(f, t, a, tau, mode, renorm):
    out = []
    for i in range(f.shape[0]):
        p = f[i] * t[a[i]]
        keep = p >= 0 if mode == "keep_positive" else p <= 0
        g = f[i] * keep
        if renorm:
            g = g / np.linalg.norm(g)
        e = lambda s: -tau * np.log(np.exp(s / tau).sum())  # noqa: E731
        out.append(e(t @ g) - e(t @ f[i]))
    return np.array(out)


def _data(n=7, k=5, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=-1)
    y = torch.randint(0, k, (n,), generator=g)
    return f, t, y


@pytest.mark.parametrize("mode", ["keep_positive", "keep_negative"])
@pytest.mark.parametrize("renorm", [True, False])
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_masked_energy_change_matches_reference(mode, renorm, tau):
    f, t, y = _data()
    got = masked_energy_change(f, t, y, tau, mode, renorm).numpy()
    np.testing.assert_allclose(got, _ref_delta(f.numpy(), t.numpy(), y.numpy(), tau, mode, renorm), rtol=1e-9, atol=1e-12)


def test_ebm_loss_combines_terms_and_anchor_switch():
    f, t, y = _data()
    params = {"lambda": 2.0, "mask_mode": "keep_positive", "anchor": "label", "renormalize": True,
              "ebm_sign": 1, "ebm_units": "logit"}
    loss, terms = ebm_loss(f, y, t, 0.01, params)
    ce = F.cross_entropy(f @ t.T / 0.01, y)
    delta = masked_energy_change(f, t, y, 0.01) / 0.01
    assert float(loss) == pytest.approx(float(ce - 2.0 * delta.mean()), rel=1e-12)
    assert terms["ce"] == pytest.approx(float(ce))
    pred = (f @ t.T).argmax(-1)
    loss_pred, _ = ebm_loss(f, y, t, 0.01, {**params, "anchor": "predicted"})
    delta_pred = masked_energy_change(f, t, pred, 0.01) / 0.01
    assert float(loss_pred) == pytest.approx(float(ce - 2.0 * delta_pred.mean()), rel=1e-12)
    loss_cos, _ = ebm_loss(f, y, t, 0.01, {**params, "ebm_units": "cosine", "ebm_sign": -1})
    assert float(loss_cos) == pytest.approx(float(ce + 2.0 * delta.mean() * 0.01), rel=1e-12)


def test_coop_loss_is_cross_entropy():
    f, t, y = _data()
    loss, _ = coop_loss(f, y, t, 0.05, {})
    assert float(loss) == pytest.approx(float(F.cross_entropy(f @ t.T / 0.05, y)), rel=1e-12)
