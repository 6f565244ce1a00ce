"""`grr-coca compare`: GRR-CoCa against Baseline CoCa from the runs the trainer logged to MLflow.

runs (which runs, and their values) -> compare (collect, write) -> render (Markdown, JSON) and plots
(validation curves); paper holds the preprint's own numbers that every row is set beside.
"""
