"""pipeline.report.render: the Markdown report's Table 2 layout and consistency lines, and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.reportkit import EVAL, TITLES, VALUES, losses, pct, row, section

from pipeline.report.paper import PAPER_TABLE2
from pipeline.report.render import change_pct


def test_report_has_both_encoders_changes_and_the_papers_numbers(default_report: Path) -> None:
    md = default_report.read_text()
    assert "Table 2 of the GRR-CoCa preprint" in md
    # Hand-checked: MSCOCO CoCa loss 1.0 + 2 * 1.5 = 4.0 against 0.5 + 2 * 1.25 = 3.0; CC12M contrastive 0.4 -> 0.3.
    assert row(md, "MSCOCO", "CoCa loss ↓") == ["4.0000", "3.0000", "-1.0000", "-25.00%", "4.6955", "4.4090",
                                                      "-6.10%"]
    assert row(md, "CC12M", "contrastive loss ↓") == ["0.4000", "0.3000", "-0.1000", "-25.00%", "0.3610", "0.2626",
                                                         "-27.25%"]
    assert row(md, "CC12M", "BLEU-4 ↑") == ["0.2000", "0.2500", "+0.0500", "+25.00%", "not reported",
                                           "not reported", "not reported"]
    assert row(md, "ROCO", "text→image R@10 (%) ↑")[:4] == ["50.00", "55.00", "+5.00", "+10.00%"]  # 50 -> 55 of 100
    for dataset, title in TITLES.items():
        b, g = losses(dataset, *VALUES["baseline"][dataset]), losses(dataset, *VALUES["grr"][dataset])
        paper = PAPER_TABLE2[dataset]
        for key, label in (("coca_loss", "CoCa loss ↓"), ("perplexity", "perplexity ↓"),
                           ("contrastive_loss", "contrastive loss ↓")):
            assert row(md, title, label) == [f"{b[key]:.4f}", f"{g[key]:.4f}", f"{g[key] - b[key]:+.4f}", pct(b[key], g[key]),
                                             f"{paper['baseline'][key]:.4f}", f"{paper['grr'][key]:.4f}",
                                             f"{paper['change'][key]:+.2f}%"]
        assert row(md, title, "caption loss ↓")[:4] == [f"{b['caption_loss']:.4f}", f"{g['caption_loss']:.4f}",
                                                        f"{g['caption_loss'] - b['caption_loss']:+.4f}",
                                                        pct(b["caption_loss"], g["caption_loss"])]
        for key, label in (("cider", "CIDEr ↑"), ("i2t_r5", "image→text R@5 (%) ↑")):
            assert row(md, title, label)[3] == pct(EVAL["baseline"][key], EVAL["grr"][key])
    assert "Missing" not in md


def test_runs_listed_baseline_first_with_how_they_were_chosen(store, default_report: Path) -> None:
    md, ids = default_report.read_text(), store["ids"]
    cc12m = section(md, "CC12M")
    assert cc12m.index(ids["baseline"]) < cc12m.index(ids["grr"])
    assert f"| GRR-CoCa | `pretrain-grr` `{ids['grr']}` | latest finished `pretrain-grr`; status FINISHED, " \
           "preset smoke, seed ?, weights: not logged |" in cc12m
    assert "fine-tuned from " + ids["grr"] in section(md, "MSCOCO")
    assert "Our runs use preset `smoke`, not `paper`" in cc12m


def test_consistency_check_per_row_with_lambdas_from_params_or_defaults(default_report: Path) -> None:
    md = default_report.read_text()
    cc12m, roco = section(md, "CC12M"), section(md, "ROCO")
    assert "- GRR-CoCa: λ = (2, 1) from run params" in cc12m and "- Baseline CoCa: λ = (2, 1) from defaults" in cc12m
    assert "- GRR-CoCa: λ = (1, 2) from run params" in roco
    assert md.count(": consistent") == 8 and "**inconsistent**" not in md
    assert "- paper, Baseline CoCa: λ = (1, 2) from paper: λ_con·L_con + λ_cap·ln(perplexity) = 7.064109, " \
           "residual -3.21e-03 (-0.045%): beyond what 4-decimal rounding allows (±1.1e-04)" in roco


def test_json_has_the_same_numbers(store, default_report: Path) -> None:
    ids = store["ids"]
    data = json.loads((default_report.parent / "comparison.json").read_text())
    assert list(data["datasets"]) == ["cc12m", "mscoco", "roco", "flickr30k"]
    assert data["datasets"]["mscoco"]["runs"] == {"baseline": ids["baseline-mscoco"], "grr": ids["grr-mscoco"]}
    assert data["datasets"]["mscoco"]["change_pct"]["coca_loss"] == pytest.approx(-25.0)
    assert data["datasets"]["roco"]["paper"]["grr"]["coca_loss"] == 6.8708
    assert data["datasets"]["flickr30k"]["baseline"]["coca_loss"] == pytest.approx(1.2 + 2 * 2.0)
    assert data["datasets"]["cc12m"]["consistency"]["grr"]["lambda_source"] == "run params"


def test_change_is_relative_to_baseline_and_undefined_without_one() -> None:
    assert change_pct(4.0, 3.0) == pytest.approx(-25.0)
    assert change_pct(None, 3.0) is None and change_pct(0.0, 3.0) is None and change_pct(1.0, float("nan")) is None


def test_benchmark_table_shows_both_encoders_where_scores_were_logged(default_report: Path) -> None:
    md = default_report.read_text()
    part = md.split("## Zero-shot and standard benchmarks")[1].split("\n## ")[0]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")[2:]]
            for line in part.splitlines() if line.startswith("| CC12M") or line.startswith("| MSCOCO")}
    model = "CC12M (pre-training)"
    assert rows[model, "zero-shot classification top-1 (%) ↑"] == ["20.00", "30.00", "+10.00", "+50.00%"]
    assert rows[model, "zero-shot classification top-5 (%) ↑"] == ["60.00", "66.00", "+6.00", "+10.00%"]
    assert rows[model, "linear probe top-1 (%) ↑"] == ["70.00", "77.00", "+7.00", "+10.00%"]
    assert rows[model, "MSCOCO 5K test image→text R@1 (%) ↑"] == ["5.00", "4.00", "-1.00", "-20.00%"]
    assert rows[model, "Flickr30K 1K test CIDEr ↑"] == ["0.4000", "0.5000", "+0.1000", "+25.00%"]
    assert len(rows) == 5  # only what was logged: the fine-tuned runs have no benchmark scores here
    data = json.loads((default_report.parent / "comparison.json").read_text())
    assert data["datasets"]["cc12m"]["change_pct"]["zeroshot/top1"] == pytest.approx(50.0)
    assert data["datasets"]["cc12m"]["grr"]["probe/top1"] == 77.0
