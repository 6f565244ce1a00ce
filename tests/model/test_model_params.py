"""Fidelity to the paper's parameter counts (counted on the meta device: no memory allocated)."""

from __future__ import annotations

import pytest

from pipeline.config import model_preset
from pipeline.model.coca import CoCa
from pipeline.model.params import format_param_report, parameter_breakdown
from pipeline.model.params import PAPER_DIFFERENCE, PAPER_TOTALS, build_on_meta, count, vit_block_count


@pytest.fixture(scope="module")
def paper_counts() -> dict[str, dict[str, int]]:
    return {enc: parameter_breakdown(model_preset("paper", encoder=enc)) for enc in ("baseline", "grr")}


def test_paper_model_is_built_on_meta_device():
    model = build_on_meta(model_preset("paper"))
    assert all(p.is_meta for p in model.parameters())


def test_grr_minus_baseline_is_exactly_the_papers_difference(paper_counts):
    diff = paper_counts["grr"]["total"] - paper_counts["baseline"]["total"]
    assert PAPER_DIFFERENCE == 685_656
    assert diff == 685_656


def test_totals_within_one_percent_of_the_paper(paper_counts):
    assert PAPER_TOTALS == {"baseline": 393_863_270, "grr": 394_548_926}
    for enc, paper_total in PAPER_TOTALS.items():
        ours = paper_counts[enc]["total"]
        assert abs(ours - paper_total) / paper_total < 0.01, (enc, ours, paper_total)


def test_only_the_vit_blocks_differ(paper_counts):
    differing = {k for k in paper_counts["grr"] if paper_counts["grr"][k] != paper_counts["baseline"][k]}
    assert differing == {"vit.blocks", "total"}


def test_per_vit_block_counts():
    assert vit_block_count(model_preset("paper", encoder="baseline")) == 7_087_872
    assert vit_block_count(model_preset("paper", encoder="grr")) == 7_145_010


def test_feed_forward_counts_match_spec():
    baseline = build_on_meta(model_preset("paper", encoder="baseline"))
    grr = build_on_meta(model_preset("paper", encoder="grr"))
    assert count(baseline.visual.blocks[0].ff) == 4_722_432  # GELU MLP 768->3072->768, biases
    assert count(grr.visual.blocks[0].ff) == 4_781_106       # GEGLU 2x(768->2073) + 2073->768, biases
    assert grr.visual.blocks[0].ff.hidden == 2073


def test_breakdown_sums_to_the_real_model_count(smoke_cfg):
    model = CoCa(smoke_cfg)
    table = parameter_breakdown(model)
    assert table["total"] == sum(p.numel() for p in model.parameters())
    assert table["total"] == parameter_breakdown(smoke_cfg)["total"]


def test_param_report_names_totals_and_difference():
    report = format_param_report(model_preset("paper"))
    assert "393,863,270" in report and "394,548,926" in report
    assert "685,656" in report and "exact" in report
    assert "7,087,872" in report and "7,145,010" in report
