"""The Ray Train learner's worker function: one phase on one rank, peft LoRA under DDP.

The driver's side, one ``TorchTrainer`` fit per phase, is :mod:`polyray.learner.trainer`.
``train_loop_per_worker`` runs on every rank, stage by stage: where to start (:func:`_resume_state`:
the latest Ray Train checkpoint, or the one :mod:`polyray.learner.checkpoints` recovered when Ray
Train's record of them was cut off, else the incoming adapter), the model and optimizer
(:func:`_setup_model`: same LoRA init on every rank), the phase (:func:`_setup_phase`), the adapter
publisher (:class:`~polyray.learner.publish.AdapterPublisher`), then per step :func:`_train_step`
(``phase.step``: forwards and backwards, micro-batch by micro-batch -> clip -> optimizer step) and
the phase's LR schedule step (:mod:`polyray.learner.schedule`), a publish (every step for phases
that sample, at the end otherwise), rank 0's logs (:func:`_log_step`) and every ``checkpoint_every``
steps :func:`_checkpoint` (adapter + optimizer + LR scheduler + step + version through
``ray.train.report``). The final adapter is saved in standard peft format.

What the worker needs of Ray Train (its rank, its latest checkpoint, DDP wrapping, reporting a
checkpoint) goes through a :class:`TrainSession`: :class:`RayTrainSession` inside a
``TorchTrainer``, or another implementation that runs :func:`run_worker` in a plain
``torch.distributed`` process (the GPU test runs the worker function so on a machine without
Ray). This module imports Ray only inside the functions that use it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from polyray.config import LearnerConfig
from polyray.learner.checkpoints import STATE_FILE, seal
from polyray.learner.job import LearnerJob, NodeInputs
from polyray.learner.logs import STEP_LOGS, LogFiles, StepLogs


class TrainSession(Protocol):
    """What a learner worker needs of its trainer: who it is, where to resume, DDP, checkpoints."""

    rank: int
    world: int

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """The directory of this phase's latest reported checkpoint (None: a fresh start), readable
        while the context lasts (a copy made to read it is removed when it ends)."""

    def prepare_model(self, model):
        """``model`` on this rank's device, wrapped for data parallelism with no buffer broadcast in the
        forward (ranks may run different numbers of micro-batches: polyray.learner.phases)."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Every rank, at a checkpoint: rank 0 hands over ``checkpoint_dir`` (None on the others)."""

    def telemetry(self, run: str, phase: str):
        """Rank 0's live metrics sink (``record(metrics)``), or None."""


def ddp_options() -> dict[str, Any]:
    """DDP keywords for the learner: no buffer sync in the forward (the model's buffers, e.g. rotary
    frequencies, are equal on every rank), so a step's forwards make no collectives and ranks may
    run different numbers of micro-batches. PyTorch >= 2.13 names it ``forward_sync_buffers``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    parameters = inspect.signature(DistributedDataParallel).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return {name: False}


class RayTrainSession:
    """:class:`TrainSession` inside a Ray Train ``TorchTrainer``."""

    def __init__(self, recovered: str | None = None):
        """``recovered``: the checkpoint to resume from when Ray Train has none to hand over (its record
        of them was set aside: :func:`polyray.learner.checkpoints.recover_run_dir`)."""
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.recovered = recovered

    @contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        import ray.train

        # one reported in this fit() is newer than the recovered one
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None and self.recovered is not None:
            checkpoint = ray.train.Checkpoint(self.recovered)
        if checkpoint is None:
            yield None
            return
        # read in place on a local or shared disk; a download (cloud storage) is removed when the set-up
        # has read it, so restarts leave no copies in the node's temp folder
        with checkpoint.as_directory() as directory:
            yield directory

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_options())

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        # ray.train.report is a barrier through the Train controller (docs/benchmarks-notes.md, "Fixed time"), so it
        # runs with checkpoints only; per-step metrics go to metrics.jsonl, which the driver's progress bar follows.
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        )

    def telemetry(self, run: str, phase: str):
        from polyray.learner.telemetry import LearnerTelemetry

        return LearnerTelemetry(run, phase)


OPTIMIZER_FILE = "optimizer.pt"


def _save_checkpoint_dir(model, optimizer, scheduler, *, step: int, version: int) -> str:
    import torch

    from polyray.learner.lora import save_adapter
    from polyray.learner.schedule import save_scheduler

    d = tempfile.mkdtemp(prefix="polyray-ckpt-")
    save_adapter(model, Path(d) / "adapter")
    torch.save(optimizer.state_dict(), Path(d) / OPTIMIZER_FILE)
    save_scheduler(scheduler, d)
    # its state, then its manifest: a checkpoint cut off in upload is told apart
    seal(d, step, version)
    return d


def _mark_superseded(logs: StepLogs, phase: str, start_step: int) -> None:
    """Append a resume marker to each step log that holds rows of ``phase`` past ``start_step``, left
    there by an earlier attempt (a restart from a checkpoint, or from step 0 when the group died
    before its first checkpoint was registered); readers then see each (phase, step) once
    (polyray.io.read_log_jsonl).

    Decided per log, not from ``metrics.jsonl`` alone: a step's rollouts (``rollouts.jsonl``,
    written while it samples) and its dynamics measurement (``dynamics.jsonl``, after its publish)
    reach their logs before its ``metrics.jsonl`` row, so a learner killed in between leaves rows
    past the start in those logs and none in ``metrics.jsonl``."""
    from polyray.io import RESUME_EVENT

    marker = {"event": RESUME_EVENT, "phase": phase, "step": start_step, "time": time.time()}
    for name in STEP_LOGS:
        if any(r.get("phase") == phase and r.get("step", 0) > start_step for r in logs.rows(name)):
            logs.append(name, marker)


def _logged(logs: StepLogs, name: str, phase: str, step: int) -> bool:
    """Whether log ``name`` holds a current row for (phase, step)."""
    return any(r.get("phase") == phase and r.get("step") == step for r in logs.rows(name))


@dataclass
class _Start:
    """Where an attempt at the phase starts: its latest checkpoint, else the incoming adapter at step 0."""

    # the weights to load (None: a fresh LoRA)
    adapter_dir: str | None
    step: int
    # the adapter version those weights were published as
    version: int
    # the checkpoint resumed from (None: a fresh start)
    checkpoint_dir: str | None = None


def _resume_state(job: LearnerJob, init_adapter: str | None, resume_dir: str | None) -> _Start:
    """Resume from this phase's latest checkpoint ``resume_dir``, else start from the previous phase's adapter
    (``init_adapter``: on this node)."""
    if resume_dir is None:
        return _Start(init_adapter, 0, job.start_version)
    state = json.loads((Path(resume_dir) / STATE_FILE).read_text())
    return _Start(str(Path(resume_dir) / "adapter"), state["step"], state["version"], resume_dir)


def build_optimizer(params: list, lr: float, weight_decay: float):
    """AdamW over the trainable (LoRA) parameters, with PyTorch's fused kernel where it has one (CPU and CUDA):
    one kernel over all tensors instead of a dozen ops per tensor (docs/benchmarks-notes.md, "Peer: where the SFT
    step's time goes")."""
    import torch

    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _setup_model(job: LearnerJob, *, model_dir: str, init_adapter: str | None, start: _Start, session: TrainSession):
    """(DDP model, tokenizer, KL reference adapter name, trainable params, optimizer, LR scheduler),
    restored from ``start``."""
    import torch

    from polyray.learner.lora import add_reference_adapter, build_peft_model
    from polyray.learner.phases import phase_class
    from polyray.learner.schedule import build_scheduler, restore_scheduler

    phase_cfg, learner = job.phase, job.learner
    # identical LoRA init on every rank
    torch.manual_seed(job.seed)
    model, tokenizer = build_peft_model(
        model_dir,
        learner.lora,
        dtype=job.model.dtype,
        adapter_dir=start.adapter_dir,
        gradient_checkpointing=learner.gradient_checkpointing,
    )
    # The KL reference is the phase's *incoming* adapter, also when resuming from a checkpoint.
    reference_dir = phase_class(phase_cfg).reference_adapter_dir(phase_cfg, init_adapter)
    reference = add_reference_adapter(model, reference_dir) if reference_dir else None
    model = session.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, phase_cfg.lr, learner.weight_decay)
    # sets the optimizer's lr to step 0's
    scheduler = build_scheduler(optimizer, phase_cfg)
    if start.checkpoint_dir is not None:
        # on the CPU first: load_state_dict moves each state to its parameter's device, wherever it was saved
        optimizer.load_state_dict(torch.load(Path(start.checkpoint_dir) / OPTIMIZER_FILE, map_location="cpu"))
        restore_scheduler(scheduler, start.checkpoint_dir, start.step)
    torch.manual_seed(job.seed + 1000 * session.rank + start.step)
    return model, tokenizer, reference, params, optimizer, scheduler


def _setup_phase(
    job: LearnerJob, *, node: NodeInputs, model, tokenizer, reference, session: TrainSession, logs: StepLogs
):
    """The phase object with its step context (the reward function and rollout log on rank 0)."""
    from polyray.learner.phases import RolloutLog, StepContext, phase_class
    from polyray.models.batching import prompt_sharing_blocker

    phase_cfg, learner, rank = job.phase, job.learner, session.rank
    phase_type = phase_class(phase_cfg)
    rollout_log = None
    if rank == 0 and learner.log_rollouts:
        rollout_log = RolloutLog(logs, phase_cfg.name, node.task)
    # (its layers drop the cache)
    share_prompts = learner.share_prompts and not learner.gradient_checkpointing
    blocker = prompt_sharing_blocker(model) if share_prompts else None
    # whole sequences: the same step, more tokens
    if blocker is not None:
        share_prompts = False
        if rank == 0:
            print(f"learner.share_prompts: off for this model ({blocker}); sequences run whole")
    # the KL reference as a rollout worker loads it: as the driver shared it (the worker takes it from storage itself)
    ctx = StepContext(
        model=model,
        tokenizer=tokenizer,
        rank=rank,
        world=session.world,
        seed=job.seed,
        reward_fn=node.reward_fn,
        reference_adapter=reference,
        rollout_log=rollout_log,
        micro_batch_tokens=learner.micro_batch_tokens,
        logits_chunk_mib=learner.logits_chunk_mib,
        share_prompts=share_prompts,
        pack_samples=learner.pack_samples,
        reference_source=phase_type.reference_adapter_dir(phase_cfg, job.init_adapter),
        init_source=job.init_adapter,
        env=job.env,
    )
    return phase_type(phase_cfg, task=node.task, n_train=job.task.n_train, ctx=ctx, pool=job.pool)


def _sync_canary(job: LearnerJob, *, task, tokenizer, rank: int):
    """Rank 0's sync canary when the run asks for one and there is a pool to check (else None); a phase
    that samples has it check at its sampling temperature too."""
    from polyray.learner.phases import encode_references
    from polyray.learner.sync import SyncCanary

    phase_cfg, every = job.phase, job.learner.sync_check_every
    if job.pool is None or rank != 0 or not every:
        return None
    probe = task.prompts("val", 1)[0]
    sampling = getattr(phase_cfg, "sampling", None)
    return SyncCanary(
        every,
        encode_references([probe], tokenizer)[0],
        tokenizer.pad_token_id,
        # the gap the kernels leave is the coarser side's: a bfloat16 engine beside a float32 learner too
        dtype="bfloat16" if "bfloat16" in (job.model.dtype, job.engine_dtype) else "float32",
        temperature=sampling.temperature if sampling else 1.0,
    )


def _train_step(model, phase, optimizer, *, params, grad_clip: float, step: int, version: int) -> tuple[dict, Any]:
    """One update: the phase's forwards and backwards (micro-batch by micro-batch), gradient clipping,
    optimizer step; (metrics, grad norm before clipping)."""
    import torch

    # every module: from_pretrained leaves the base's in eval mode under a training root
    model.train()
    optimizer.zero_grad(set_to_none=True)
    metrics = phase.step(step, version)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return metrics, grad_norm


def _log_step(logs: StepLogs, phase_cfg, metrics: dict[str, Any], telemetry) -> None:
    """Rank 0: the step's row in metrics.jsonl (which the driver's progress bar reads), the telemetry gauges."""
    logs.append("metrics.jsonl", {"phase": phase_cfg.name, **metrics})
    if telemetry is not None:
        telemetry.record(metrics)


def _checkpoint(
    session: TrainSession, metrics: dict[str, Any], *, model, optimizer, scheduler, step: int, version: int
):
    """Every rank reports; rank 0 attaches the checkpoint (adapter + optimizer + LR scheduler + step + version).
    The report persists it (Ray Train uploads it to the run's storage before returning), so rank 0's
    local copy is removed then, and also when the report fails: a run of 100 steps would otherwise
    leave a directory per checkpoint in the node's temp folder."""
    checkpoint_dir = (
        _save_checkpoint_dir(model, optimizer, scheduler, step=step, version=version) if session.rank == 0 else None
    )
    try:
        session.report(metrics, checkpoint_dir)
    finally:
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def train_loop_per_worker(config: dict[str, LearnerJob]) -> None:
    """The ``TorchTrainer``'s worker function (Ray Train hands each rank its ``train_loop_config``)."""
    job = config["job"]
    run_rank(job, RayTrainSession(job.recovered_checkpoint))


def run_rank(job: LearnerJob, session: TrainSession) -> None:
    """:func:`run_worker` on ``job`` as this rank's node sees it."""
    run_worker(job, job.on_node(session.rank), session)


def run_worker(job: LearnerJob, node: NodeInputs, session: TrainSession) -> None:
    """One learner rank's attempt at a phase (module docstring), from its latest checkpoint if any; ``node``:
    what this rank made of ``job`` on its node (:meth:`LearnerJob.on_node`)."""
    from polyray.learner.publish import AdapterPublisher

    phase_cfg, learner, pool = job.phase, job.learner, job.pool
    # rank 0's step logs: through the driver's actor, or (a worker run without one) into the run directory
    logs = job.logs or StepLogs(LogFiles(job.output_dir))
    rank = session.rank
    _set_up_device(learner)
    # read whole by the set-up
    with session.latest_checkpoint() as resume_dir:
        start = _resume_state(job, node.init_adapter, resume_dir)
        model, tokenizer, reference, params, optimizer, scheduler = _setup_model(
            job, model_dir=node.model_dir, init_adapter=node.init_adapter, start=start, session=session
        )
    phase = _setup_phase(
        job, node=node, model=model, tokenizer=tokenizer, reference=reference, session=session, logs=logs
    )
    canary = _sync_canary(job, task=node.task, tokenizer=tokenizer, rank=rank)
    publisher = AdapterPublisher(pool, phase_cfg.name, phase.ctx, canary)
    publisher.start(
        start.version,
        start.step,
        holds_published=start.checkpoint_dir is None and start.adapter_dir is not None,
        publishes_every_step=phase.publishes_every_step,
        finished=start.checkpoint_dir is not None and start.step >= phase_cfg.steps,
    )

    # a restarted attempt: the rows a lost one wrote past this start are superseded
    if rank == 0:
        _mark_superseded(logs, phase_cfg.name, start.step)
    telemetry = session.telemetry(job.run_name, phase_cfg.name) if rank == 0 else None
    # The driver's diversity-dynamics probe (polyray.eval.dynamics): every rank publishes when it is
    # due (versions stay equal across ranks); rank 0 measures.
    dynamics = job.dynamics
    if rank == 0 and start.step == 0:
        _measure_start(dynamics, logs, phase_cfg.name, publisher.version)

    for step in range(start.step, phase_cfg.steps):
        t0 = time.perf_counter()
        # the adapter the step's fresh samples are drawn under
        version = publisher.version
        # the LR this step trains at
        lr = scheduler.get_last_lr()[0]
        metrics, grad_norm = _train_step(
            model, phase, optimizer, params=params, grad_clip=learner.grad_clip, step=step, version=version
        )
        # once per optimizer step: the next step's LR
        scheduler.step()
        last = step + 1 == phase_cfg.steps
        measure = dynamics is not None and dynamics.due(step + 1, last)
        # one step ahead, the workers' loads finish behind the next step; the phase's last publish and one
        # the dynamics probe samples next are complete before the step ends
        wait = not (phase.samples_ahead and learner.publish_behind_step) or last or measure
        sync_s = publisher.publish(step + 1, wait) if phase.publishes_every_step or last or measure else 0.0
        # rollout + update + the publish's time on the step's path; dynamics excluded
        step_s = time.perf_counter() - t0
        if measure and rank == 0:
            # (None: no pool)
            logs.append("dynamics.jsonl", *filter(None, [dynamics(step + 1, publisher.version)]))
        # the phase's "loss" is the whole batch's, summed over ranks
        metrics.update(
            grad_norm=float(grad_norm),
            lr=lr,
            step=step + 1,
            version=publisher.version,
            step_s=step_s,
            sync_s=sync_s,
            time=time.time(),
            **publisher.take_canary_metrics(),
        )
        # an attempt restarted from a checkpoint
        if step == start.step and start.checkpoint_dir is not None:
            metrics["resumed_from"] = start.step
        if rank == 0:
            _log_step(logs, phase_cfg, metrics, telemetry)
        if last or (step + 1) % phase_cfg.checkpoint_every == 0:
            _checkpoint(
                session,
                metrics,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                step=step + 1,
                version=publisher.version,
            )
    if rank == 0:
        _save_final_adapter(model, job.output_dir, phase=phase_cfg.name, version=publisher.version, shared=job.storage)


def _set_up_device(learner: LearnerConfig) -> None:
    """The rank's CPU threads, and on a GPU the allocator's expandable segments (before the model loads:
    the memory plan's GPU runtime term assumes them, :mod:`polyray.learner.memory`)."""
    import torch

    torch.set_num_threads(learner.threads)
    if learner.use_gpu:
        from polyray.learner.memory import expandable_cuda_segments

        expandable_cuda_segments()


def _measure_start(dynamics, logs: StepLogs, phase: str, version: int) -> None:
    """The dynamics probe's step-0 row, unless an attempt that restarted from step 0 wrote it (same weights)."""
    if dynamics is not None and not _logged(logs, "dynamics.jsonl", phase, 0):
        logs.append("dynamics.jsonl", *filter(None, [dynamics(0, version)]))


def _save_final_adapter(model, output_dir: str | None, *, phase: str, version: int, shared) -> None:
    """The phase's adapter in peft format: in ``adapters/<phase>`` of the run directory, or of the run's
    storage (``shared``, a :class:`~polyray.storage.RunStorage`) when the run has one."""
    from polyray.learner.lora import save_adapter

    extra = {"polyray_version.json": {"version": version, "phase": phase}}
    if shared is None:
        save_adapter(model, Path(output_dir) / "adapters" / phase, extra=extra)
        return
    with tempfile.TemporaryDirectory(prefix=f"polyray-{phase}-") as tmp:
        save_adapter(model, Path(tmp) / phase, extra=extra)
        shared.put_dir(Path(tmp) / phase, "adapters", phase)
