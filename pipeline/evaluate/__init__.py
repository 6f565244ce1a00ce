"""Evaluation beyond the paper's losses: metrics.py (BLEU-4, CIDEr, recall@K, the CoCa-loss
consistency check), inference.py (captioning and retrieval with a trained checkpoint) and
evaluation.py (the evaluate stage's scores). This file imports nothing.
"""
