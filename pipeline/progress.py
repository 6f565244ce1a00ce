"""Progress lines of long loops (training steps, evaluation batches): elapsed time and an ETA."""

from __future__ import annotations

import time


class Pace:
    """Elapsed time of this process's run and its ETA at the pace so far (a resumed run counts from
    where it resumed), for the progress lines."""

    def __init__(self, first_step: int):
        self.first_step, self.started = first_step, time.monotonic()

    def line(self, step: int, total_steps: int) -> str:
        elapsed = time.monotonic() - self.started
        eta = elapsed / max(step - self.first_step, 1) * max(total_steps - step, 0)
        return f"elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min"
