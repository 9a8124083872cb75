"""The learning-rate schedule of the learner: a linear warmup, then constant or cosine decay.

Counted in optimizer updates (not online steps), so a schedule means the same whatever the
number of pairs a step yields or the number of learner ranks:

    lr_at(u, base_lr=1e-4, kind="cosine", warmup=10, decay=100, min_ratio=0.1)

update u (0-based: the u-th optimizer update of the run) uses
    warmup (u < warmup):      base_lr * (u + 1) / warmup
    constant:                 base_lr
    cosine (u >= warmup):     base_lr * (min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2),
                              p = min(1, (u - warmup) / (decay - warmup))
so the first update already moves (lr base_lr / warmup), the warmup's last reaches base_lr, and
cosine ends at base_lr * min_ratio at update `decay` and stays there.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def check_schedule(kind: str, warmup: int, decay: int | None, min_ratio: float) -> None:
    """Raise ValueError naming the learner.* field that is wrong."""
    if kind not in SCHEDULES:
        raise ValueError(f"learner.lr_schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"learner.warmup_updates must be an int >= 0, got {warmup!r}")
    bad_decay = decay is None or isinstance(decay, bool) or not isinstance(decay, int) or decay <= warmup
    if kind == "cosine" and bad_decay:
        raise ValueError(
            f"learner.decay_updates must be an int > learner.warmup_updates ({warmup}) for "
            f"learner.lr_schedule=cosine, got {decay!r}"
        )
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"learner.min_lr_ratio must be in [0, 1], got {min_ratio!r}")


def lr_at(
    update: int,
    base_lr: float,
    kind: str = "constant",
    warmup: int = 0,
    decay: int | None = None,
    min_ratio: float = 0.0,
) -> float:
    """The learning rate of optimizer update `update` (0-based); see the module docstring."""
    check_schedule(kind, warmup, decay, min_ratio)
    if update < 0:
        raise ValueError(f"update must be >= 0, got {update}")
    if update < warmup:
        return base_lr * (update + 1) / warmup
    if kind == "constant":
        return base_lr
    progress = min(1.0, (update - warmup) / (decay - warmup))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
