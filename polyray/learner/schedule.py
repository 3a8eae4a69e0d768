"""Per-phase learning-rate schedules: transformers' LambdaLR schedules, stepped once per optimizer step.

The formulas, as these library functions compute them, are in docs/algorithms.md §7. With T =
``steps``, W = ``warmup_steps`` and r = ``min_lr_ratio``, optimizer step t (0-based) trains at
``lr * f(t)``:

- ``constant``: ``get_constant_schedule_with_warmup``; f(t) = t / W during warm-up, then 1
  (r must be 0: the config refuses a floor without a decay). W = 0 gives ``lr`` at every step,
  which is the learner without a schedule.
- ``linear`` / ``cosine``: ``get_wsd_schedule`` with no stable stage and a decay over the T - W
  steps after warm-up; f(t) = r + (1 - r) t / W during warm-up, then r + (1 - r) g(p) with
  p = (t - W) / (T - W) and g(p) = 1 - p or (1 + cos(pi p)) / 2. transformers' plain linear and
  cosine schedules have no floor; this one has, and with r = 0 it is theirs.

Step 0 of a warm-up trains at ``r * lr`` (0 by default), as in transformers; the floor is reached
after the last step (f(T) = r), so the last step trains slightly above it.

The scheduler is a function of the step count only, and a checkpoint holds its state next to the
optimizer's (:data:`SCHEDULER_FILE`); :func:`restore_scheduler` puts it back at the checkpoint's
step, from that file or, for a checkpoint written before schedules existed, by stepping a fresh one.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

SCHEDULER_FILE = "scheduler.pt"


def build_scheduler(optimizer, phase_cfg):
    """The phase's LR scheduler on ``optimizer`` (whose ``lr`` is the phase's peak ``lr``), at step 0."""
    from transformers import get_constant_schedule_with_warmup, get_wsd_schedule

    warmup = phase_cfg.warmup_steps
    if phase_cfg.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    return get_wsd_schedule(
        optimizer,
        num_warmup_steps=warmup,
        num_stable_steps=0,
        num_decay_steps=phase_cfg.steps - warmup,
        decay_type=phase_cfg.lr_schedule,
        min_lr_ratio=phase_cfg.min_lr_ratio,
    )


def save_scheduler(scheduler, checkpoint_dir: str | Path) -> None:
    import torch

    torch.save(scheduler.state_dict(), Path(checkpoint_dir) / SCHEDULER_FILE)


def restore_scheduler(scheduler, checkpoint_dir: str | Path, step: int) -> None:
    """Put a fresh ``scheduler`` (from :func:`build_scheduler`) at the checkpoint's ``step``, as if it
    had been stepped after each of the first ``step`` optimizer steps, and set its optimizer's LR to
    that step's.

    From the checkpoint's :data:`SCHEDULER_FILE`, else (a checkpoint written before schedules
    existed) by stepping. The optimizer's ``lr`` is set explicitly: the optimizer state of such a
    checkpoint holds the constant ``lr``, not the schedule's.
    """
    import torch

    path = Path(checkpoint_dir) / SCHEDULER_FILE
    if path.exists():
        scheduler.load_state_dict(torch.load(path))
    else:
        # stepping ahead of the optimizer is the point here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for _ in range(step - scheduler.last_epoch):
                scheduler.step()
    if scheduler.last_epoch != step:
        raise RuntimeError(f"{path}: the scheduler is at step {scheduler.last_epoch}, its checkpoint at {step}")
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
