"""Per-phase learning-rate schedules (polyray/learner/schedule.py, docs/algorithms.md §7).

The LR of every optimizer step is checked against the closed form written out here in float64
(not against transformers' lambdas, which the scheduler is built from), and through the update
AdamW actually makes; a schedule restored from a checkpoint continues as if never interrupted.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from polyray.config import GRPOPhaseConfig, PolychromicSFTPhaseConfig, SFTPhaseConfig, load_config
from polyray.io import ConfigError
from polyray.learner.schedule import SCHEDULER_FILE, build_scheduler, restore_scheduler, save_scheduler

QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"
STEPS = 13
CASES = [  # (schedule, warmup_steps, min_lr_ratio)
    ("constant", 0, 0.0), ("constant", 1, 0.0), ("constant", 4, 0.0), ("constant", STEPS - 1, 0.0),
    ("linear", 0, 0.0), ("linear", 4, 0.0), ("linear", 4, 0.2), ("linear", STEPS - 1, 0.2),
    ("cosine", 0, 0.0), ("cosine", 1, 0.0), ("cosine", 4, 0.0), ("cosine", 4, 0.2), ("cosine", 0, 1.0),
]  # fmt: skip


def expected_factor(t: int, schedule: str, steps: int, warmup: int, floor: float) -> float:
    """lr_t / lr: from ``floor`` linearly up to 1 over the warm-up, then constant, or a linear or
    half-cosine decay over the remaining steps that would reach ``floor`` at t = steps."""
    if t < warmup:
        return floor + (1 - floor) * t / warmup
    if schedule == "constant":
        return 1.0
    progress = (t - warmup) / (steps - warmup)
    decay = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * decay


def _phase(schedule: str, warmup: int, floor: float, steps: int = STEPS, lr: float = 3e-3) -> GRPOPhaseConfig:
    return GRPOPhaseConfig(steps=steps, lr=lr, lr_schedule=schedule, warmup_steps=warmup, min_lr_ratio=floor)


def _setup(phase, weight_decay: float = 0.0):
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = torch.optim.AdamW([param], lr=phase.lr, weight_decay=weight_decay, eps=0.0)
    return param, optimizer, build_scheduler(optimizer, phase)


def _train(param, optimizer, scheduler, steps: range) -> list[float]:
    """The learner's loop: read the step's LR, optimizer step, scheduler step; the LRs trained at."""
    lrs = []
    for _ in steps:
        lrs.append(scheduler.get_last_lr()[0])
        assert optimizer.param_groups[0]["lr"] == lrs[-1]
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule, warmup, floor", CASES)
def test_every_step_trains_at_the_closed_form_lr(schedule, warmup, floor):
    phase = _phase(schedule, warmup, floor)
    param, optimizer, scheduler = _setup(phase)
    lrs = _train(param, optimizer, scheduler, range(STEPS))
    expected = [phase.lr * expected_factor(t, schedule, STEPS, warmup, floor) for t in range(STEPS)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert lrs[-1] >= phase.lr * floor  # the floor is where the decay would be after the last step


@pytest.mark.parametrize("schedule, warmup, floor", [("constant", 4, 0.0), ("linear", 3, 0.2), ("cosine", 5, 0.0)])
def test_adamw_moves_by_the_scheduled_lr(schedule, warmup, floor):
    """With a constant gradient and eps = 0, Adam's bias-corrected direction is exactly 1, so each
    step moves the parameter by -lr_t: the scheduled LR is the one the optimizer applies."""
    phase = _phase(schedule, warmup, floor)
    param, optimizer, scheduler = _setup(phase)
    for t in range(STEPS):
        before = param.detach().clone()
        _train(param, optimizer, scheduler, range(1))
        moved = (before - param.detach()).tolist()
        assert moved == pytest.approx([phase.lr * expected_factor(t, schedule, STEPS, warmup, floor)] * 3, rel=1e-9)


def test_weight_decay_is_scaled_by_the_scheduled_lr():
    """Decoupled decay (AdamW): theta <- theta * (1 - lr_t * lambda) before the Adam step."""
    phase = _phase("cosine", 2, 0.1)
    param, optimizer, scheduler = _setup(phase, weight_decay=0.5)
    with torch.no_grad():
        param.fill_(2.0)
    for t in range(STEPS):
        before = param.detach().clone()
        lr_t = phase.lr * expected_factor(t, "cosine", STEPS, 2, 0.1)
        _train(param, optimizer, scheduler, range(1))
        assert param.detach().tolist() == pytest.approx((before * (1 - lr_t * 0.5) - lr_t).tolist(), rel=1e-9)


def test_a_config_without_schedule_keys_trains_at_lr_every_step():
    """The shipped quickstart sets no schedule: every phase trains at exactly its ``lr`` (the learner
    as it was before schedules), and the AdamW LR is that float, not a product close to it."""
    cfg = load_config(QUICKSTART)
    for phase in cfg.phases:
        assert (phase.lr_schedule, phase.warmup_steps, phase.min_lr_ratio) == ("constant", 0, 0.0)
        param, optimizer, scheduler = _setup(phase)
        assert _train(param, optimizer, scheduler, range(phase.steps)) == [phase.lr] * phase.steps
    assert SFTPhaseConfig().lr_schedule == PolychromicSFTPhaseConfig().lr_schedule == "constant"


def _checkpoint(tmp_path: Path, optimizer, scheduler) -> Path:
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    save_scheduler(scheduler, tmp_path)
    return tmp_path


def _resumed(phase, checkpoint: Path, step: int):
    """What the learner's _setup_model does with a checkpoint: fresh optimizer and scheduler, then
    the optimizer's state, then the scheduler put at the checkpoint's step."""
    param, optimizer, scheduler = _setup(phase)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt"))
    restore_scheduler(scheduler, checkpoint, step)
    return param, optimizer, scheduler


@pytest.mark.parametrize("schedule, warmup, floor", [("constant", 4, 0.0), ("linear", 4, 0.2), ("cosine", 3, 0.1)])
@pytest.mark.parametrize("at", [1, 3, 4, 5, STEPS - 1])
def test_a_resumed_schedule_continues_as_if_never_interrupted(tmp_path, schedule, warmup, floor, at):
    phase = _phase(schedule, warmup, floor)
    whole = _train(*_setup(phase), range(STEPS))

    param, optimizer, scheduler = _setup(phase)
    first = _train(param, optimizer, scheduler, range(at))
    checkpoint = _checkpoint(tmp_path, optimizer, scheduler)
    weights = param.detach().clone()
    param, optimizer, scheduler = _resumed(phase, checkpoint, at)
    with torch.no_grad():
        param.copy_(weights)  # the adapter comes back from its own file
    assert first + _train(param, optimizer, scheduler, range(at, STEPS)) == whole


@pytest.mark.parametrize("schedule, warmup, floor", [("constant", 4, 0.0), ("cosine", 3, 0.1)])
def test_a_checkpoint_without_a_scheduler_file_steps_a_fresh_one(tmp_path, schedule, warmup, floor):
    """A checkpoint from before schedules: an optimizer state at the constant lr, no scheduler file.
    The resumed LRs are the uninterrupted schedule's, without torch's out-of-order warning."""
    phase, at = _phase(schedule, warmup, floor), 6
    whole = _train(*_setup(phase), range(STEPS))
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    old = torch.optim.AdamW([param], lr=phase.lr, eps=0.0)
    for _ in range(at):
        param.grad = torch.ones_like(param)
        old.step()
    torch.save(old.state_dict(), tmp_path / "optimizer.pt")
    assert not (tmp_path / SCHEDULER_FILE).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        param, optimizer, scheduler = _resumed(phase, tmp_path, at)
    assert optimizer.param_groups[0]["lr"] == whole[at]
    assert _train(param, optimizer, scheduler, range(at, STEPS)) == whole[at:]


def test_a_scheduler_file_at_another_step_is_refused(tmp_path):
    phase = _phase("cosine", 2, 0.0)
    param, optimizer, scheduler = _setup(phase)
    _train(param, optimizer, scheduler, range(3))
    checkpoint = _checkpoint(tmp_path, optimizer, scheduler)
    with pytest.raises(RuntimeError, match="the scheduler is at step 3, its checkpoint at 4"):
        _resumed(phase, checkpoint, 4)


def test_the_learners_checkpoint_holds_the_schedule(tmp_path, monkeypatch):
    """loop._save_checkpoint_dir writes the scheduler next to the optimizer (adapter saving stubbed)."""
    import polyray.learner.lora
    from polyray.learner.loop import _save_checkpoint_dir

    monkeypatch.setattr(polyray.learner.lora, "save_adapter", lambda model, path: None)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    phase = _phase("linear", 2, 0.0)
    whole = _train(*_setup(phase), range(STEPS))
    param, optimizer, scheduler = _setup(phase)
    _train(param, optimizer, scheduler, range(5))
    checkpoint = Path(_save_checkpoint_dir(None, optimizer, scheduler, step=5, version=3))
    assert (checkpoint / SCHEDULER_FILE).exists()
    assert _train(*_resumed(phase, checkpoint, 5), range(5, STEPS)) == whole[5:]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["phases.0.warmup_steps=60"], "phases.0.warmup_steps: must be < steps (60)"),
        (["phases.0.warmup_steps=-1"], "phases.0.warmup_steps: Input should be greater than or equal to 0"),
        (["phases.0.type=polychromic_sft", "phases.0.warmup_steps=61"], "phases.0.warmup_steps: must be < steps (60)"),
        (["phases.1.warmup_steps=100", "phases.1.lr_schedule=cosine"], "phases.1.warmup_steps: must be < steps (100)"),
        (
            ["phases.1.lr_schedule=exponential"],
            "phases.1.lr_schedule: Input should be 'constant', 'linear' or 'cosine'",
        ),
        (["phases.1.min_lr_ratio=0.1"], "phases.1.min_lr_ratio: must be 0 with lr_schedule constant"),
        (
            ["phases.1.lr_schedule=linear", "phases.1.min_lr_ratio=1.5"],
            "phases.1.min_lr_ratio: Input should be less than or equal to 1",
        ),
    ],
)
def test_bad_schedule_settings_name_the_field(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, overrides)
    assert needle in str(info.value), str(info.value)


def test_the_longest_warmup_loads():
    overrides = ["phases.1.warmup_steps=99", "phases.1.lr_schedule=linear", "phases.1.min_lr_ratio=0.1"]
    cfg = load_config(QUICKSTART, overrides)
    assert (cfg.phases[1].warmup_steps, cfg.phases[1].lr_schedule, cfg.phases[1].min_lr_ratio) == (99, "linear", 0.1)


@pytest.mark.parametrize("fails", [False, True])
def test_a_reported_checkpoint_leaves_no_local_copy(tmp_path, monkeypatch, fails):
    """Rank 0's checkpoint directory is whole when the session persists it, and gone afterwards (or
    after a failed report): one directory per checkpoint used to pile up in the temp folder."""
    import polyray.learner.lora
    from polyray.learner.loop import OPTIMIZER_FILE, _checkpoint

    monkeypatch.setattr(polyray.learner.lora, "save_adapter", lambda model, path: Path(path).mkdir())
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    param, optimizer, scheduler = _setup(_phase("linear", 2, 0.0))
    seen = {}

    class Session:
        rank = 0

        def report(self, metrics, checkpoint_dir):
            seen["dir"] = Path(checkpoint_dir)
            seen["files"] = sorted(p.name for p in seen["dir"].iterdir())
            if fails:
                raise RuntimeError("storage unreachable")

    if fails:
        with pytest.raises(RuntimeError, match="storage unreachable"):
            _checkpoint(Session(), {"step": 3}, model=None, optimizer=optimizer, scheduler=scheduler, step=3, version=2)
    else:
        _checkpoint(Session(), {"step": 3}, model=None, optimizer=optimizer, scheduler=scheduler, step=3, version=2)
    assert {"adapter", OPTIMIZER_FILE, SCHEDULER_FILE, "state.json"} <= set(seen["files"])
    assert seen["dir"].parent == tmp_path and not seen["dir"].exists() and list(tmp_path.iterdir()) == []


def _adamw_float64(params, grads, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    """Decoupled-decay Adam written out in float64, step by step: the reference for the learner's optimizer."""
    p = [x.double().clone() for x in params]
    m, v = [torch.zeros_like(x) for x in p], [torch.zeros_like(x) for x in p]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = g.double()
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            p[i] = p[i] * (1 - lr * weight_decay)
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            p[i] = p[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_the_learners_optimizer_is_fused_adamw_and_resumes_a_per_tensor_checkpoint(tmp_path):
    """build_optimizer: PyTorch's fused AdamW on the CPU; its updates equal AdamW's in float64, and an
    optimizer state saved by the per-tensor AdamW (checkpoints written before it) continues the same."""
    from polyray.learner.loop import build_optimizer

    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 16), (16, 8), (8,)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(6)]
    lr, wd = 3e-3, 0.01

    def run(optimizer_of, steps, params=None, state=None):
        params = params or [torch.nn.Parameter(x.clone()) for x in start]
        optimizer = optimizer_of(params)
        if state is not None:
            optimizer.load_state_dict(state)
        for step_grads in steps:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        return params, optimizer

    fused, optimizer = run(lambda ps: build_optimizer(ps, lr, wd), grads)
    assert optimizer.defaults["fused"] is True
    for got, want in zip(fused, _adamw_float64(start, grads, lr, wd), strict=True):
        torch.testing.assert_close(got.detach().double(), want, rtol=1e-5, atol=1e-6)

    per_tensor = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, foreach=False)  # noqa: E731
    params, old = run(per_tensor, grads[:3])
    torch.save(old.state_dict(), tmp_path / "optimizer.pt")
    resumed, _ = run(lambda ps: build_optimizer(ps, lr, wd), grads[3:], params, torch.load(tmp_path / "optimizer.pt"))
    for got, want in zip(resumed, fused, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
