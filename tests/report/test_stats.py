"""The statistics of the report, on cases computed by hand."""

import math

import pytest

from pipeline.report.stats import estimate, factorial_effects, paired_difference


def test_mean_sd_and_t_interval_by_hand():
    # values 1, 2, 3, 6: mean 3, sd sqrt(((-2)^2 + 1 + 0 + 9) / 3) = sqrt(14/3); t(0.975, 3) = 3.182446
    e = estimate([1, 2, 3, 6])
    assert (e.mean, e.n) == (3.0, 4)
    assert e.sd == pytest.approx(math.sqrt(14 / 3))
    half = 3.182446305284263 * math.sqrt(14 / 3) / 2
    assert (e.low, e.high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert not e.excludes_zero  # [-0.44, 6.44]
    assert estimate([4, 5, 6]).excludes_zero  # 5 +- 4.303 / sqrt(3) = [2.52, 7.48]
    one = estimate([2.5])
    assert (one.sd, one.low, one.high, one.excludes_zero) == (None, None, None, False)


def test_a_paired_difference_uses_the_common_seeds():
    grr = {0: 2.53, 1: 3.13, 2: 1.33, 3: 9.9}
    baseline = {0: 4.26, 1: 4.06, 2: 1.85}
    d = paired_difference(grr, baseline)
    assert d.n == 3 and d.mean == pytest.approx(((2.53 - 4.26) + (3.13 - 4.06) + (1.33 - 1.85)) / 3)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({5: 1.0}, baseline)


def test_factorial_effects_of_a_two_by_two_design_by_hand():
    """y = 10 + 2a + 3b + 1ab (a, b = -1/+1), plus seed noise that is the same in every cell: the main
    effects are 2 * 2 = 4 and 2 * 3 = 6, the interaction 2 * 1 = 2, whatever the noise."""
    levels = {"norm": ("layernorm", "rmsnorm"), "ffn": ("gelu", "geglu")}
    code = {"layernorm": -1, "rmsnorm": 1, "gelu": -1, "geglu": 1}
    noise = {0: 0.0, 1: 0.5, 2: -0.3}
    results = {(n, f): {s: 10 + 2 * code[n] + 3 * code[f] + code[n] * code[f] + noise[s] for s in noise}
               for n in levels["norm"] for f in levels["ffn"]}
    effects = factorial_effects(results, ["norm", "ffn"], levels)
    assert set(effects) == {"norm", "ffn", "norm x ffn"}
    assert effects["norm"].mean == pytest.approx(4.0) and effects["ffn"].mean == pytest.approx(6.0)
    assert effects["norm x ffn"].mean == pytest.approx(2.0)
    assert effects["norm"].sd == pytest.approx(0.0, abs=1e-12)  # the noise cancels within each seed
    del results[("rmsnorm", "geglu")]
    with pytest.raises(ValueError, match="lacks cells"):
        factorial_effects(results, ["norm", "ffn"], levels)
