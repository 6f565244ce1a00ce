"""Trainable-parameter accounting against the paper's stated totals.

Models are built on the ``meta`` device, so the paper-size model is counted without allocating
its weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .coca import CoCa
from .config import BUNDLES, ModelConfig, VitFactors

# GRR-CoCa paper: stated trainable parameter counts (docs/paper.md §Parameter accounting).
PAPER_TOTALS = {"baseline": 393_863_270, "grr": 394_548_926}
PAPER_DIFFERENCE = PAPER_TOTALS["grr"] - PAPER_TOTALS["baseline"]  # 685,656


def count(module: nn.Module | nn.Parameter) -> int:
    """Number of trainable scalars in a module (or one parameter)."""
    if isinstance(module, nn.Parameter):
        return module.numel() if module.requires_grad else 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_on_meta(cfg: ModelConfig, **options) -> CoCa:
    """The model (CoCa(cfg, **options)) with every tensor on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return CoCa(cfg, **options)


def parameter_breakdown(model_or_cfg: CoCa | ModelConfig) -> dict[str, int]:
    """Trainable parameters per component (ordered); the last entry, "total", is their sum."""
    model = build_on_meta(model_or_cfg) if isinstance(model_or_cfg, ModelConfig) else model_or_cfg
    vit, uni, multi = model.visual, model.unimodal, model.multimodal
    parts = {
        "vit.patch_embed": count(vit.patch_embed),
        "vit.positions": count(vit.pos_embed) if isinstance(getattr(vit, "pos_embed", None), nn.Parameter) else 0,
        "vit.blocks": count(vit.blocks),
        "pooler.generative": count(model.generative_pooler),
        "pooler.contrastive": count(model.contrastive_pooler),
        "text.token_embedding": count(uni.token_embedding),
        "unimodal.blocks": count(uni.blocks),
        "unimodal.final_norm": count(uni.final_norm),
        "multimodal.self_blocks": sum(count(layer.self_block) for layer in multi.layers),
        "multimodal.cross_blocks": sum(count(layer.cross_block) for layer in multi.layers),
        "multimodal.final_norm": count(multi.final_norm),
        "head": count(multi.head),
        "logit_scale": count(model.logit_scale),
    }
    if model.logit_bias is not None:  # the sigmoid contrastive loss's bias
        parts["logit_bias"] = count(model.logit_bias)
    if model.adapter is not None:  # adapter fine-tuning's gated cross-modal adapter
        parts["adapter"] = count(model.adapter)
    parts["total"] = sum(parts.values())
    if parts["total"] != count(model):
        raise AssertionError("parameter breakdown misses a component")  # keep the table complete
    return parts


def vit_block_count(cfg: ModelConfig) -> int:
    """Trainable parameters of one ViT block."""
    return count(build_on_meta(cfg).visual.blocks[0])


def format_param_report(cfg_paper: ModelConfig) -> str:
    """Table of per-component counts for both encoders at ``cfg_paper``'s sizes, with the totals'
    residuals against the paper and the GRR - Baseline difference (``grr-coca params --preset paper``).
    When ``cfg_paper``'s ViT design is not one of the two bundles, a third column counts it, with its
    difference from each bundle."""
    configs = {name: cfg_paper.replace(encoder=name, vit=VitFactors()) for name in BUNDLES}
    variant = cfg_paper.variant
    if variant not in BUNDLES:
        configs[variant] = cfg_paper
    tables = {name: parameter_breakdown(cfg) for name, cfg in configs.items()}
    blocks = {name: vit_block_count(cfg) for name, cfg in configs.items()}
    extra = [name for name in configs if name not in BUNDLES]
    head = f"{'component':<26}{'Baseline CoCa':>16}{'GRR-CoCa':>16}{'GRR - Baseline':>16}"
    head += "".join(f"{name:>28}{'- Baseline':>14}{'- GRR':>14}" for name in extra)
    lines = [head]
    rows = [(key, {name: tables[name][key] for name in configs}) for key in tables["baseline"]]
    rows.append(("(one ViT block)", blocks))
    for key, n in rows:
        if key == "total":
            lines.append("-" * len(head))
        line = f"{key:<26}{n['baseline']:>16,}{n['grr']:>16,}{n['grr'] - n['baseline']:>16,}"
        line += "".join(f"{n[name]:>28,}{n[name] - n['baseline']:>+14,}{n[name] - n['grr']:>+14,}" for name in extra)
        lines.append(line)
    lines.append("")
    for name, label in (("baseline", "Baseline CoCa"), ("grr", "GRR-CoCa")):
        ours, paper = tables[name]["total"], PAPER_TOTALS[name]
        lines.append(f"{label:<14} ours {ours:>13,}  paper {paper:>13,}  residual {ours - paper:>+12,}"
                     f" ({100 * (ours - paper) / paper:+.3f}%)")
    diff = tables["grr"]["total"] - tables["baseline"]["total"]
    verdict = "exact" if diff == PAPER_DIFFERENCE else f"off by {diff - PAPER_DIFFERENCE:+,}"
    lines.append(f"GRR - Baseline: ours {diff:,}, paper {PAPER_DIFFERENCE:,} ({verdict})")
    return "\n".join(lines)
