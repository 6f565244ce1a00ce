"""The trainer: one loop (loop.py) built from small parts, each owning one concept.

config.py (TrainConfig, the phases), parallelize.py (processes, devices, DDP, precision, compile),
optim.py (AdamW), schedule.py (warm-up + cosine with warm restarts), early_stopping.py (soft reset),
validate.py (validation loss), resume.py (exact resume: the registered stateful parts and the
fingerprint). The data loader is pipeline/data/loader.py, the model and its loss pipeline/model/,
the checkpoint format pipeline/checkpoint.py, tracking pipeline/tracking.py. This file imports nothing.
"""
