"""The CoCa model library, in plain PyTorch: config.py (ModelConfig), layers.py (RMSNorm, GEGLU, RoPE,
attention with a KV cache), coca.py (Baseline CoCa and GRR-CoCa), losses.py (CoCaLoss), generate.py
(greedy and beam search), params.py (parameter accounting against the paper).

Import from the modules themselves: this file imports nothing, so reading the configuration
(pipeline.model.config) never imports torch.
"""
