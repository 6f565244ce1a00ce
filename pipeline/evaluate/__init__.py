"""Evaluation: captioning scores, retrieval recall and the GRR-vs-Baseline comparison report."""

from .metrics import (Consistency, caption_scores, coca_loss_consistency, ptb_tokenize, retrieval_recall,
                      rounding_tolerance)

__all__ = ["Consistency", "caption_scores", "coca_loss_consistency", "ptb_tokenize", "retrieval_recall",
           "rounding_tolerance"]
