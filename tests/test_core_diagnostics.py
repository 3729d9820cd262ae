import math

import pytest
import torch

from grpo_guard.core import grad_norm, per_step_grad_norms, per_step_ratio_stats, spread


def test_per_step_stats_on_known_values():
    # step 0: ratios 1.2 (A>0), 0.7 (A<0), 1.0 (A>0), 1.3 (A<0); step 2: ratios 0.5 (A>0), 2.0 (A<0); step 1 empty
    ratios = torch.tensor([1.2, 0.7, 1.0, 1.3, 0.5, 2.0], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0, -0.5, 1.0, -1.0])
    steps = torch.tensor([0, 0, 0, 0, 2, 2])
    bias = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.4, 0.4])
    st = per_step_ratio_stats(steps, ratios.log(), adv, 3, 0.1, bias=bias, quantiles=(0.5,))
    assert st["count"].tolist() == [4, 0, 2]
    assert math.isnan(float(st["raw_ratio_mean"][1]))
    assert float(st["raw_ratio_mean"][0]) == pytest.approx(1.05)
    assert float(st["raw_ratio_min"][2]) == pytest.approx(0.5) and float(st["raw_ratio_max"][2]) == pytest.approx(2.0)
    assert float(st["raw_ratio_q50"][0]) == pytest.approx(1.1)
    # step 0: A>0 has ratios {1.2, 1.0}: half above 1.1; A<0 has {0.7, 1.3}: half below 0.9, half above
    assert float(st["clip_high_pos"][0]) == 0.5 and float(st["clip_low_pos"][0]) == 0.0
    assert float(st["clip_low_neg"][0]) == 0.5 and float(st["clip_high_neg"][0]) == 0.5
    assert float(st["frac_raw_below_1"][0]) == 0.25
    lstd = float(ratios[:4].log().std(unbiased=False))
    assert float(st["log_ratio_std"][0]) == pytest.approx(lstd)
    assert float(st["bias_over_spread"][0]) == pytest.approx(0.1 / lstd)
    assert float(st["drift_u"][2]) == pytest.approx(math.sqrt(0.8))
    assert float(st["approx_kl"][2]) == pytest.approx(0.5 * math.log(2) ** 2)


def test_transformed_ratio_and_asymmetric_clip():
    log_r = torch.zeros(4)
    used = torch.log(torch.tensor([1.05, 1.25, 0.85, 0.97]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    st = per_step_ratio_stats(torch.zeros(4, dtype=torch.long), log_r, adv, 1, (0.1, 0.2), log_ratio_used=used)
    assert float(st["clip_high_pos"][0]) == 0.5  # only 1.25 > 1.2
    assert float(st["clip_low_neg"][0]) == 0.5  # only 0.85 < 0.9
    assert float(st["raw_ratio_mean"][0]) == 1.0
    assert "bias_mean" not in st


def test_sum_reduction_drift_needs_dims():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="num_dims"):
        per_step_ratio_stats(torch.zeros(2, dtype=torch.long), z, z, 1, 0.1, bias=z, reduction="sum")
    st = per_step_ratio_stats(torch.zeros(2, dtype=torch.long), torch.tensor([0.1, -0.1]), z, 1, 0.1,
                              bias=torch.tensor([50.0, 50.0]), reduction="sum", num_dims=100)
    assert float(st["drift_u"][0]) == pytest.approx(1.0)


def test_bad_inputs():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="step_index"):
        per_step_ratio_stats(torch.tensor([0, 1, 5]), z, z, 3, 0.1)
    with pytest.raises(ValueError, match="advantages"):
        per_step_ratio_stats(torch.tensor([0, 1, 2]), z, torch.zeros(2), 3, 0.1)
    with pytest.raises(ValueError, match="clip_range"):
        per_step_ratio_stats(torch.tensor([0, 1, 2]), z, z, 3, 0.0)
    with pytest.raises(ValueError, match="num_steps"):
        per_step_ratio_stats(torch.tensor([0, 1, 2]), z, z, 0, 0.1)
    with pytest.raises(ValueError, match="reduction"):
        per_step_ratio_stats(torch.tensor([0, 1, 2]), z, z, 3, 0.1, reduction="avg")


def test_grad_norm_matches_manual_and_leaves_grad_untouched():
    w = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    frozen = torch.randn(3)
    x = torch.randn(7, 5)
    loss = ((x @ w + b + frozen) ** 2).mean()
    gn = grad_norm(loss, [w, b, frozen])
    gw, gb = torch.autograd.grad(loss, [w, b], retain_graph=True)
    assert float(gn) == pytest.approx(float(torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum())), rel=1e-6)
    assert w.grad is None and b.grad is None
    norms = per_step_grad_norms([loss, 2 * loss], [w, b])
    torch.testing.assert_close(norms, torch.stack([gn, 2 * gn]))
    with pytest.raises(ValueError, match="params"):
        grad_norm(loss, [frozen])


def test_spread():
    assert float(spread(torch.tensor([1.0, 4.0, 2.0, float("nan")]))) == 4.0
    with pytest.raises(ValueError, match="values"):
        spread(torch.tensor([0.0, 1.0]))


def _naive_step_stats(steps, log_r, used, adv, bias, k, eps, qs):
    """One step's statistics from a boolean selection and torch's own reductions (what the vectorised
    segment reductions must equal)."""
    sel = steps == k
    if not bool(sel.any()):
        return None
    lr, lu, a, b = log_r[sel].double(), used[sel].double(), adv[sel].double(), bias[sel].double()
    out = {"count": float(sel.sum())}
    for prefix, r in (("raw_ratio", lr.exp()), ("ratio", lu.exp())):
        out |= {f"{prefix}_mean": r.mean(), f"{prefix}_std": r.std(unbiased=False), f"{prefix}_min": r.min(),
                f"{prefix}_max": r.max()}
        out |= {f"{prefix}_q{round(q * 100):02d}": v for q, v in zip(qs, torch.quantile(r, torch.tensor(qs, dtype=torch.float64)))}
    r = lu.exp()
    for side, mask in (("high", r > 1 + eps), ("low", r < 1 - eps)):
        for sign, cond in (("pos", a > 0), ("neg", a < 0)):
            out[f"clip_{side}_{sign}"] = (mask & cond).sum().double() / cond.sum() if bool(cond.any()) else float("nan")
    out["frac_raw_below_1"] = (lr < 0).double().mean()
    out["log_ratio_std"] = lr.std(unbiased=False)
    out["approx_kl"] = 0.5 * (lr**2).mean()
    out["bias_mean"] = b.mean()
    out["bias_over_spread"] = b.mean() / out["log_ratio_std"] if out["log_ratio_std"] > 0 else float("nan")
    out["drift_u"] = (2 * b.mean()).sqrt()
    return {key: float(v) for key, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_stats_equal_a_per_step_loop(seed):
    # uneven counts, an empty step, a one-entry step, ties, a step with only positive advantages
    g = torch.Generator().manual_seed(seed)
    k_steps, qs = 6, (0.0, 0.05, 0.3, 0.5, 0.95, 1.0)
    steps = torch.cat([torch.full((n,), k) for k, n in ((0, 37), (1, 1), (3, 12), (4, 64), (5, 5))])
    steps = steps[torch.randperm(steps.numel(), generator=g)]
    n = steps.numel()
    log_r = torch.randn(n, generator=g) * 0.1
    log_r[:4] = 0.0  # ties
    used = log_r - torch.rand(n, generator=g) * 0.05
    adv = torch.randn(n, generator=g)
    adv[steps == 5] = adv[steps == 5].abs() + 0.1
    bias = torch.rand(n, generator=g)
    st = per_step_ratio_stats(steps, log_r, adv, k_steps, 0.05, log_ratio_used=used, bias=bias, quantiles=qs)
    for k in range(k_steps):
        want = _naive_step_stats(steps, log_r, used, adv, bias, k, 0.05, qs)
        if want is None:
            assert float(st["count"][k]) == 0
            assert all(math.isnan(float(v[k])) for key, v in st.items() if key != "count")
            continue
        for key, w in want.items():
            got = float(st[key][k])
            assert (math.isnan(got) and math.isnan(w)) or got == pytest.approx(w, rel=1e-9, abs=1e-12), (k, key)


def test_stats_of_no_entries_are_nan():
    z = torch.zeros(0)
    st = per_step_ratio_stats(torch.zeros(0, dtype=torch.long), z, z, 2, 0.1, bias=z)
    assert st["count"].tolist() == [0, 0]
    assert all(bool(torch.isnan(v).all()) for key, v in st.items() if key != "count")
