"""Pipeline schedules: the order in which a stage runs the forward (F) and backward (B) passes of its
micro-batches. The engine runs that order on the stage's streams; the bubble emerges from the waits.

- `gpipe`: every micro-batch's forward, then every backward (in reverse order, as autograd frees them).
- `1f1b` (PipeDream-Flush, Megatron's default): stage s runs min(p - s - 1, m) forwards to fill the
  pipeline, then alternates one forward and one backward, then drains the remaining backwards. Same
  bubble as GPipe, (p - 1) / (m + p - 1) of the step for equal stages, but at most p - s micro-batches'
  activations alive at once instead of m.

Inference has no backward passes, and both schedules run the forwards in micro-batch order.
"""

from __future__ import annotations

from typing import Literal

Schedule = Literal["gpipe", "1f1b"]


def stage_order(stage: int, stages: int, microbatches: int, schedule: Schedule,
                backward: bool = True) -> list[tuple[int, str]]:
    """(micro-batch, "F" or "B") in the order stage `stage` of `stages` runs them."""
    m = microbatches
    if not backward:
        return [(k, "F") for k in range(m)]
    if schedule == "gpipe":
        return [(k, "F") for k in range(m)] + [(k, "B") for k in reversed(range(m))]
    warmup = min(stages - stage - 1, m)
    order = [(k, "F") for k in range(warmup)]
    for k in range(warmup, m):
        order += [(k, "F"), (k - warmup, "B")]
    order += [(k, "B") for k in range(m - warmup, m)]
    return order
