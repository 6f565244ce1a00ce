"""The GRR-CoCa preprint's own numbers, as printed, which the report sets beside our runs.

Kept apart from the runs' values: these are fixed facts about the paper, not anything we measure.
"""

from __future__ import annotations

# The loss weights (lambda_con, lambda_cap) of each phase in the paper (docs/paper.md §Losses and metrics).
# They check the paper's own rows (CoCa loss = lambda_con * L_con + lambda_cap * ln(perplexity)); a run's
# own weights come from its logged params.
PAPER_LAMBDAS: dict[str, tuple[float, float]] = {"pretrain": (2.0, 1.0), "finetune": (1.0, 2.0)}

# The paper's Table 2, validation sets (docs/paper.md §Results): losses only, 4 decimals as printed;
# its "change" column is (GRR - Baseline) / Baseline in percent.
PAPER_TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "cc12m": {"baseline": {"coca_loss": 3.2864, "perplexity": 12.9976, "contrastive_loss": 0.3610},
              "grr": {"coca_loss": 3.0516, "perplexity": 12.5151, "contrastive_loss": 0.2626},
              "change": {"coca_loss": -7.15, "perplexity": -3.71, "contrastive_loss": -27.25}},
    "mscoco": {"baseline": {"coca_loss": 4.6955, "perplexity": 5.4669, "contrastive_loss": 1.2971},
               "grr": {"coca_loss": 4.4090, "perplexity": 5.1523, "contrastive_loss": 1.1296},
               "change": {"coca_loss": -6.10, "perplexity": -5.75, "contrastive_loss": -12.92}},
    "roco": {"baseline": {"coca_loss": 7.0609, "perplexity": 12.0258, "contrastive_loss": 2.0900},
             "grr": {"coca_loss": 6.8708, "perplexity": 11.7377, "contrastive_loss": 1.9479},
             "change": {"coca_loss": -2.69, "perplexity": -2.40, "contrastive_loss": -6.80}},
    "flickr30k": {"baseline": {"coca_loss": 5.4383, "perplexity": 7.9568, "contrastive_loss": 1.2908},
                  "grr": {"coca_loss": 5.0111, "perplexity": 7.3686, "contrastive_loss": 1.0164},
                  "change": {"coca_loss": -7.86, "perplexity": -7.39, "contrastive_loss": -21.25}},
}
