"""The CoCa model library: Baseline CoCa and GRR-CoCa, their losses, generation and accounting."""

from .coca import (AttentionalPooler, CoCa, MultimodalTextDecoder, UnimodalTextDecoder,
                   VisionTransformer)
from .config import ModelConfig
from .generate import beam_search, generate, greedy_search
from .losses import CoCaLoss, caption_loss, contrastive_loss, gather_with_grad, perplexity
from .params import (PAPER_DIFFERENCE, PAPER_TOTALS, build_on_meta, format_param_report,
                     parameter_breakdown)

__all__ = [
    "ModelConfig",
    "CoCa", "VisionTransformer", "AttentionalPooler", "UnimodalTextDecoder", "MultimodalTextDecoder",
    "CoCaLoss", "contrastive_loss", "caption_loss", "perplexity", "gather_with_grad",
    "generate", "greedy_search", "beam_search",
    "format_param_report", "parameter_breakdown", "build_on_meta", "PAPER_TOTALS",
    "PAPER_DIFFERENCE",
]
