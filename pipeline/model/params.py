"""Trainable-parameter accounting against the paper's stated totals.

Models are built on the ``meta`` device, so the paper-size model is counted without allocating
its weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .coca import CoCa
from .config import ModelConfig

# GRR-CoCa paper: stated trainable parameter counts (docs/paper.md §Parameter accounting).
PAPER_TOTALS = {"baseline": 393_863_270, "grr": 394_548_926}
PAPER_DIFFERENCE = PAPER_TOTALS["grr"] - PAPER_TOTALS["baseline"]  # 685,656


def count(module: nn.Module | nn.Parameter) -> int:
    """Number of trainable scalars in a module (or one parameter)."""
    if isinstance(module, nn.Parameter):
        return module.numel() if module.requires_grad else 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_on_meta(cfg: ModelConfig) -> CoCa:
    """The model with every tensor on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return CoCa(cfg)


def parameter_breakdown(model_or_cfg: CoCa | ModelConfig) -> dict[str, int]:
    """Trainable parameters per component (ordered); the last entry, "total", is their sum."""
    model = build_on_meta(model_or_cfg) if isinstance(model_or_cfg, ModelConfig) else model_or_cfg
    vit, uni, multi = model.visual, model.unimodal, model.multimodal
    parts = {
        "vit.patch_embed": count(vit.patch_embed),
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
    parts["total"] = sum(parts.values())
    if parts["total"] != count(model):
        raise AssertionError("parameter breakdown misses a component")  # keep the table complete
    return parts


def vit_block_count(cfg: ModelConfig) -> int:
    """Trainable parameters of one ViT block."""
    return count(build_on_meta(cfg).visual.blocks[0])


def format_param_report(cfg_paper: ModelConfig) -> str:
    """Table of per-component counts for both encoders at ``cfg_paper``'s sizes, with the totals'
    residuals against the paper and the GRR - Baseline difference (``grr-coca params --preset paper``)."""
    configs = {name: cfg_paper.replace(encoder=name) for name in ("baseline", "grr")}
    tables = {name: parameter_breakdown(cfg) for name, cfg in configs.items()}
    blocks = {name: vit_block_count(cfg) for name, cfg in configs.items()}
    lines = [f"{'component':<26}{'Baseline CoCa':>16}{'GRR-CoCa':>16}{'GRR - Baseline':>16}"]
    for key in tables["baseline"]:
        b, g = tables["baseline"][key], tables["grr"][key]
        if key == "total":
            lines.append("-" * 74)
        lines.append(f"{key:<26}{b:>16,}{g:>16,}{g - b:>16,}")
    lines.append(f"{'(one ViT block)':<26}{blocks['baseline']:>16,}{blocks['grr']:>16,}"
                 f"{blocks['grr'] - blocks['baseline']:>16,}")
    lines.append("")
    for name, label in (("baseline", "Baseline CoCa"), ("grr", "GRR-CoCa")):
        ours, paper = tables[name]["total"], PAPER_TOTALS[name]
        lines.append(f"{label:<14} ours {ours:>13,}  paper {paper:>13,}  residual {ours - paper:>+12,}"
                     f" ({100 * (ours - paper) / paper:+.3f}%)")
    diff = tables["grr"]["total"] - tables["baseline"]["total"]
    verdict = "exact" if diff == PAPER_DIFFERENCE else f"off by {diff - PAPER_DIFFERENCE:+,}"
    lines.append(f"GRR - Baseline: ours {diff:,}, paper {PAPER_DIFFERENCE:,} ({verdict})")
    return "\n".join(lines)
