"""``polyray run``: the driver. A sequence of stage calls, one short function each.

check inputs (and the memory plan) -> open the run directory -> prepare the model (printing its memory
plan) and the engagement models -> start Ray ->
open the adapter store -> start services -> launch the rollout pool -> evaluate base ->
for each phase: fit (Ray Train) -> evaluate; results written after every stage.

Results and the resolved config are written as soon as they exist, so a run that fails
half-way keeps everything it finished. ``results.json`` holds per stage (``base``, each phase)
the :class:`~polyray.eval.record.EvalRecord` of its evaluation on ``eval.split`` (``eval_split``: test,
or val for a candidate of a selection; :mod:`polyray.drivers.results`), in the record's JSON form, and under ``test`` the test
evaluations a selection asked for afterwards (:func:`polyray.drivers.selection.evaluate_on_test`: the
chosen candidate's only, once). ``resume=True`` continues such a run in the same
directory: finished evaluations and phases are not redone, a phase cut off mid-way continues
from its latest Ray Train checkpoint (same storage path and name), and the adapter store is
read back from the run directory, so version ids continue after the newest one.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

import ray

from polyray.cluster import GpuInfo, init_ray, needed_cpus, rollout_demand, run_demands
from polyray.config import RunConfig
from polyray.drivers.preflight import check_inputs, plan_memory, worker_config
from polyray.drivers.results import (
    SPLIT_NAMES,
    RunResults,
    open_run_dir,
    results_table,
    write_results,
    write_run_report,
)
from polyray.eval.policy_eval import build_eval_task
from polyray.eval.record import EvalRecord
from polyray.fingerprint import describe as describe_fingerprint
from polyray.fingerprint import run_fingerprint, same_numbers
from polyray.drivers.startup import StartupTrace
from polyray.io import LIBRARY_LOG, Timer, console, make_progress, route_library_logs, warn
from polyray.learner.logs import StepLogs
from polyray.models.source import prepare_model_dir
from polyray.reward.engagement import ensure_engagement_model
from polyray.reward.plan import POSTS_LABEL, scores_rollouts
from polyray.rollout.store import STORE_DIR
from polyray.storage import share_model
from polyray.tracking import VAL_EVAL, open_tracker

if TYPE_CHECKING:
    from polyray.drivers.warm import WarmComponents
    from polyray.learner.group import LearnerGroup
    from polyray.rollout.pool import RolloutPool
    from polyray.storage import RunStorage, StoredDir
    from polyray.tasks.base import Prompt, Task
    from polyray.tracking import RunTracker


def evaluate_stage(
    name: str, pool, task, prompts, run: RunConfig, version: int | None, split: str = "test", model_dir=None
) -> EvalRecord:
    """``name``'s evaluation; a run with a multi-turn environment evaluates episodes, which needs the model's
    tokenizer (from ``model_dir``)."""
    from polyray.eval.policy_eval import evaluate_policy

    tokenizer = None
    if run.env is not None:
        from polyray.models.source import model_tokenizer

        tokenizer = model_tokenizer(model_dir)
    what = f"{len(prompts)} {SPLIT_NAMES[split]} prompts x {run.eval.n_samples} {'episodes' if run.env else 'samples'}"
    with console.status(f"evaluating {name} on {what}"):
        return evaluate_policy(
            pool, task, prompts, run.eval, version=version, seed=run.seed, env=run.env, tokenizer=tokenizer
        )


def train_stage(
    run: RunConfig,
    index: int,
    model_dir,
    out: Path,
    *,
    pool,
    version: int,
    adapter: str | None,
    tracker=None,
    logs=None,
    group=None,
):
    from polyray.eval.dynamics import DynamicsProbe
    from polyray.learner.trainer import run_phase

    phase = run.phases[index]
    probe = DynamicsProbe(run, index, pool, model_dir) if run.dynamics.every else None
    with make_progress() as bar:
        task_id = bar.add_task(f"{phase.name} ({phase.type})", total=phase.steps, info="starting workers")

        def show(state: dict[str, Any]) -> None:
            m = state.get("metrics") or {}
            keys = ("loss", "reward_mean", "kl", "step_s")
            info = "  ".join(f"{k} {m[k]:.3f}" for k in keys if k in m)
            bar.update(task_id, completed=state.get("step", 0), info=info or "starting workers")
            if tracker is not None:
                tracker.log_progress()

        return run_phase(
            run,
            index,
            model_dir,
            out,
            pool=pool,
            start_version=version,
            init_adapter=adapter,
            on_progress=show,
            dynamics=probe,
            logs=logs,
            group=group,
        )


# the adapter version a run started from ``init_adapter`` gives it
INIT_VERSION = 1


def publish_init_adapter(run: RunConfig, pool, shared=None) -> tuple[int, str]:
    """Publish ``run.init_adapter`` as version 1 (once: a resumed run finds it in the store) and
    keep it; (version, adapter directory, or its reference in the run's storage ``shared``) for the
    first phase to start from."""
    from polyray.learner.lora import read_adapter

    path = Path(run.init_adapter).resolve()
    # a first start, or one killed inside this very put (id reserved, no weights)
    if not pool.holds(INIT_VERSION):
        pool.publish(INIT_VERSION, read_adapter(path), phase="init")
    pool.pin("init", INIT_VERSION)
    return INIT_VERSION, share_adapter(shared, path, "init")


def share_adapter(shared, path: Path, name: str) -> str:
    """The adapter directory ``path`` as learner ranks get it: the path, or with the run's storage
    ``shared`` (:class:`~polyray.storage.RunStorage`) a reference to it there (put once)."""
    return str(path) if shared is None else str(shared.put_dir(path, "adapters", name))


def generation_args(run: RunConfig, out: Path, model_dir, store_root: str | None = None) -> dict[str, Any]:
    """The generation service's args for the live policy of ``run``: the run's model (a path, or its
    reference in cluster.storage), engine settings and adapter store (``store_root``: the run's in
    cluster.storage), under ``run.generation.args``."""
    from polyray.generation.service import run_generation_args

    args = {
        **run_generation_args(run, out, model_dir, named=False),
        "resources": run.cluster.worker_resources,
        **run.generation.args,
    }
    if store_root is not None:
        args["store_root"] = store_root
    return {**args, "route_prefix": run.generation.route_prefix}


def generation_cpus(args: dict[str, Any]) -> float:
    from polyray.config.services import GenerationServiceConfig

    cfg = GenerationServiceConfig.model_validate(args)
    return cfg.num_cpus * cfg.num_replicas


def run_pipeline(
    run: RunConfig,
    output_dir: Path | None = None,
    resume: bool = False,
    on_stage=None,
    serve_generation: bool = False,
    warm: WarmComponents | None = None,
    gpus: dict[str, GpuInfo] | None = None,
    verbose: bool = False,
) -> RunResults:
    """Run (or with ``resume`` continue) ``run`` in ``output_dir`` (default ``runs/<name>``); returns
    its results (:class:`~polyray.drivers.results.RunResults`). ``on_stage(results)`` is called after each evaluation is written;
    ``serve_generation`` serves the live policy over HTTP while the run lasts (``run.generation``);
    ``warm``: the rollout workers and learner ranks a sweep's trials share (:mod:`polyray.drivers.warm`);
    ``gpus``: the cluster's GPUs as a sweep read them (:func:`polyray.cluster.cluster_gpus`), else read here;
    ``verbose``: Ray's, Serve's, vLLM's and transformers' log lines in the terminal, not the run's library log."""
    out = Path(output_dir or Path("runs") / run.name).resolve()
    engagement = check_inputs(run)
    results = open_run_dir(run, out, resume)
    tracker = open_tracker(run, out)
    state = RunState(
        run, out, resume, results, tracker=tracker, on_stage=on_stage, warm=warm, gpus=gpus, verbose=verbose
    )
    try:
        _run_stages(state, engagement, serve_generation)
    except BaseException:
        if state.tracker is not None:
            state.tracker.finish(failed=True)
        raise
    if state.tracker is not None:
        state.tracker.finish(failed=False)
    console.print(results_table(results, run.eval.ks))
    report = write_run_report(out, results)
    console.print(f"outputs in {out}  (report: {report})", highlight=False)
    return results


@dataclass
class RunState:
    """What the stages of one run share: its config and directory, the results so far (written after
    every stage), the stage timer, and what the stages start (the rollout pool, the evaluation task)."""

    run: RunConfig
    out: Path
    resume: bool
    # results.json as written so far
    results: RunResults
    # the rest by keyword
    _: KW_ONLY
    tracker: RunTracker | None = None
    # called with the results after each evaluation
    on_stage: Callable[[RunResults], None] | None = None
    timer: Timer = field(default_factory=Timer)
    # when each component was asked for and was ready (startup.json)
    trace: StartupTrace = field(default_factory=StartupTrace)
    pool: RolloutPool | None = None
    # the task as evaluations see it (build_eval_task)
    task: Task | None = None
    # the stage evaluations' (eval.split)
    eval_prompts: list[Prompt] = field(default_factory=list)
    # on the driver's node
    model_dir: Path | None = None
    # what workers get: model_dir, or its reference in cluster.storage
    model_ref: str | StoredDir | None = None
    # the config workers get (worker_config): input paths as storage references
    worker_run: RunConfig | None = None
    # the run's place in cluster.storage, or None
    shared: RunStorage | None = None
    # the generation service is deployed (--serve-generation)
    serving: bool = False
    # the learner's step logs, one actor for every phase
    logs: StepLogs | None = None
    # the kept ranks (learner.keep_ranks), started by start_learner
    learner: LearnerGroup | None = None
    # what a sweep's trials share (polyray.drivers.warm)
    warm: WarmComponents | None = None
    # the rollout workers are the sweep's (warm), not this run's
    shared_pool: bool = False
    # the cluster's GPUs as a sweep read them (cluster_gpus)
    gpus: dict[str, GpuInfo] | None = None
    # the libraries' log lines in the terminal, not the run's library.log
    verbose: bool = False
    # when launch_pool and start_learner asked for the engines and the kept ranks (wall clock)
    pool_asked: float = 0.0
    learner_asked: float = 0.0
    # the services deployed and not yet waited for (wait_for_services)
    pending_services: list[PendingService] = field(default_factory=list)

    def keeper(self):
        """The sweep's rank keeper (the ranks outlive this run), or None."""
        return self.warm.keeper if self.warm is not None else None

    def __post_init__(self) -> None:
        from polyray.storage import RunStorage

        self.timer.timings.update(self.results.timings_s)
        self.results.timings_s = self.timer.timings
        self.shared = RunStorage.of(self.run.cluster.storage, self.run.name, self.out)
        if self.warm is None:
            import psutil

            # the command's own start (its imports) before the run's; a sweep's trials share one process
            origin = self.trace.origin
            self.trace.mark("driver", process=psutil.Process().create_time(), init=origin, ready=origin)

    def store_root(self) -> str:
        """The adapter store's root: the run directory's, or the run's in cluster.storage."""
        return self.shared.location(STORE_DIR) if self.shared else str((self.out / STORE_DIR).resolve())


def _run_stages(state: RunState, engagement: list, serve_generation: bool) -> None:
    """The stages in order (:func:`run_components`, then): evaluate base -> per phase: fit, evaluate. Every
    finished stage is in results.json."""
    with run_components(state, engagement=engagement, serve_generation=serve_generation):
        version, adapter = (0, None)
        if state.run.init_adapter:
            version, adapter = publish_init_adapter(state.run, state.pool, state.shared)
        if state.run.eval.base:
            with state.trace.span("base evaluation"):
                evaluate(state, "base", version or None)
            state.trace.write(state.out)
        for index, phase in enumerate(state.run.phases):
            version, adapter = fit(state, index, version, adapter)
            evaluate(state, phase.name, version)
        # a resumed run with nothing left to train still serves (and names) its generation service
        wait_for_services(state)
    timings = state.timer.timings
    timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 2)
    write_results(state.out, state.results)


@contextlib.contextmanager
def run_components(
    state: RunState, *, engagement: list, serve_generation: bool = False, training: bool = True
) -> Iterator[None]:
    """What a run's stages work with, started in order and released however the block ends: model ->
    engagement models -> Ray -> adapter store -> rollout pool launched -> learner ranks -> services (the
    generation and reward services deployed: the first phase that trains waits for them) -> the evaluations'
    encoder loading -> rollout pool ready. ``training`` False (a finished run's test evaluations): no step logs, services or
    learner ranks. The one lifecycle of every job that runs a run's stages (:func:`release` ends it)."""
    from polyray.diversity import preload_encoders
    from polyray.rollout.store import open_store

    prepare_inputs(state, engagement)
    generation = None
    if serve_generation:
        generation = generation_args(state.run, state.out, state.model_ref, state.store_root())
    start_ray(state, generation)
    state.shared_pool = state.warm is not None and state.warm.serves(state.run, state.model_ref)
    # the shared workers find each run's store by it
    name = state.warm.store_name if state.shared_pool else None
    store = open_store(state.store_root(), state.run.rollout.store_keep, name=name)
    finished = False
    if training:
        # starts beside the engines and services
        state.logs = StepLogs.on_driver_node(state.out)
    try:
        # the rollout engines start while the services do (each waits mostly on its own imports)
        launched_s = launch_pool(state, store)
        if training:
            # its ranks import while the engines and services start and the base is evaluated
            start_learner(state)
            start_services(state, generation)
        # the driver only waits from here: its evaluations' sentence encoder loads meanwhile
        preload_encoders(state.run.eval.diversity)
        wait_for_pool(state, launched_s)
        yield
        finished = True
    finally:
        release(state, store, finished)


def release(state: RunState, store, finished: bool) -> None:
    """Everything the run started, each step on its own (one that fails skips none of the others and is a
    warning: the run's own outcome, or error, is what it reports)."""
    learner = state.learner
    steps = [
        # the service lasts as long as the run
        (state.serving, lambda: stop_services(state)),
        # ranks are handed to the sweep's next run only after a clean end: one may be mid-phase otherwise
        (learner is not None and finished, lambda: learner.hand_back()),
        (learner is not None and not finished, lambda: learner.cancel()),
        (state.pool is not None and not state.shared_pool, lambda: state.pool.shutdown()),
        # the rows are on disk
        (state.logs is not None, lambda: state.logs.close()),
        # its state is on disk; a resume opens it again
        (True, lambda: ray.kill(store)),
    ]
    for due, step in steps:
        if not due:
            continue
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the others still run
            warn(f"stopping the run's components: {exc!r}")


def prepare_inputs(state: RunState, engagement: list) -> None:
    """The base model (built or resolved) and its memory plan (printed; a config that cannot fit stops
    here, before Ray starts), the engagement models the run needs, the evaluation task."""
    run = state.run
    with state.timer("model_build"):
        state.model_dir = prepare_model_dir(run.model, run.task)
    state.results.model_dir = str(state.model_dir)
    with state.timer("model_to_storage") if run.cluster.storage else contextlib.nullcontext():
        # what crosses to the workers
        state.model_ref = share_model(run.cluster.storage, state.model_dir)
    # before anything starts on Ray
    for line in plan_memory(run, state.model_dir):
        console.print(line, highlight=False)
    for t in engagement:
        with (
            state.timer("reward_model_build"),
            console.status(f"training the engagement model into {t.path} ({POSTS_LABEL[t.posts]})"),
        ):
            ensure_engagement_model(run.task.path, t.path, run.task.seed, lines=t.lines, posts=t.posts)
    state.task = build_eval_task(run, state.model_dir)
    judge = quality_judge(state.task, run)
    if judge is not None:
        state.results.quality_judge = judge
        console.print(
            f"quality 'engagement' judged by {judge['model']} (trained on {judge['trained_on']}); GRPO's"
            f" reward model: {judge['reward_model']}",
            highlight=False,
        )
    state.eval_prompts = state.task.prompts(run.eval.split)
    record_fingerprint(state)
    with state.timer("inputs_to_storage") if run.cluster.storage else contextlib.nullcontext():
        state.worker_run = worker_config(run)


def record_fingerprint(state: RunState) -> None:
    """Print the run's fingerprint (:mod:`polyray.fingerprint`) and keep it in results.json; a resumed run on
    other weights, prompts, CPU kernels or libraries says so, since its later stages may not match its earlier."""
    fingerprint = run_fingerprint(state.model_dir, state.eval_prompts)
    console.print(describe_fingerprint(fingerprint), highlight=False)
    before = state.results.fingerprint
    if before is not None and not same_numbers(before, fingerprint):
        warn(f"this run's earlier stages ran with another fingerprint ({describe_fingerprint(before)})")
    state.results.fingerprint = fingerprint


def quality_judge(task, run: RunConfig) -> dict[str, Any] | None:
    """Which engagement model judged quality ``engagement`` (results.json ``quality_judge``): its directory,
    the posts whose rows trained it (its metadata's ``trained_on``; ``unknown`` for a model this run did not
    train), GRPO's reward model, and whether the two are one (circular); None when quality is not engagement."""
    model = getattr(task, "engagement_model", None)
    if model is None or not run.task.needs_engagement_model():
        return None
    trained = model.meta.get("trained_on") or {}
    judge, reward = task.eval_engagement_model_dir(), task.engagement_model_dir()
    return {
        "model": str(judge),
        "trained_on": POSTS_LABEL.get(trained.get("posts"), "unknown rows"),
        "rows": trained.get("rows"),
        "reward_model": str(reward),
        "circular": judge == reward,
    }


def start_ray(state: RunState, generation: dict[str, Any] | None) -> None:
    """Join or start the cluster, check it holds the run's actors, and plan memory on its GPUs (read from the
    cluster where the config leaves ``gpu_memory_gib`` unset): a run that cannot fit stops before any actor starts."""
    from polyray.cluster import check_gpus, cluster_gpus, reads_gpu_memory, uses_gpus, with_cluster_gpu_memory

    run = state.run
    # before Ray starts: its first lines come from ray.init
    if not state.verbose:
        log = route_library_logs(state.out / LIBRARY_LOG)
        console.print(f"library logs (Ray, Serve, vLLM): {log}  (--verbose shows them here)", highlight=False)
    with state.timer("ray_init"), state.trace.span("ray"):
        init_ray(
            run.cluster,
            needed_cpus(run) + (generation_cpus(generation) if generation else 0.0),
            demands=run_demands(run, generation),
        )
    if uses_gpus(run):
        # read even where the config sizes memory: the GPUs' kind and driver are checked too
        gpus = state.gpus
        if gpus is None:
            gpus = cluster_gpus(run.cluster.resource_wait_s, required=reads_gpu_memory(run))
        check_gpus(run, gpus)
        state.run, line = with_cluster_gpu_memory(run, gpus)
        if line is not None:
            console.print(line, highlight=False)
            for line in plan_memory(state.run, state.model_dir):
                console.print(line, highlight=False)


def start_services(state: RunState, generation: dict[str, Any] | None) -> None:
    """The generation service (``--serve-generation``) first: it starts Serve's HTTP proxy, which the reward
    app then shares; the reward service when GRPO scores through its endpoint. Each is deployed, not waited
    for: no stage before the first phase's training calls either, and that phase waits for them
    (:func:`wait_for_services`), which prints the generation service's URL once it answers."""
    run = state.run
    if generation is not None:
        from polyray.generation.service import GENERATION_APP, deploy_generation

        asked, start = time.time(), time.perf_counter()
        url = deploy_generation(
            generation,
            run.generation.host,
            run.generation.http_port,
            wait_s=run.cluster.resource_wait_s,
            wait=False,
        )
        # stopped with the run from here on, however it ends
        state.serving = True
        announce = f"generation service: {url}  (models: base, latest, policy-vN as they are published)"
        deployed = PendingService(
            "generation service", [GENERATION_APP], asked=asked, deploy_s=time.perf_counter() - start, announce=announce
        )
        state.pending_services.append(deployed)
    if run.reward.endpoint and any(scores_rollouts(p) for p in run.phases):
        from polyray.config.run import custom_reward_functions
        from polyray.reward.service import ensure_reward_service

        asked, start = time.time(), time.perf_counter()
        names = ensure_reward_service(
            run.reward,
            custom_reward_functions(run),
            run.cluster.worker_resources,
            run.cluster.resource_wait_s,
            wait=False,
        )
        deployed = PendingService("reward service", names, asked=asked, deploy_s=time.perf_counter() - start)
        state.pending_services.append(deployed)


@dataclass
class PendingService:
    """A service's Serve apps, deployed and not yet seen running."""

    # in the start-up trace ("reward service"); its timing is "<label>_start" with underscores
    label: str
    names: list[str]
    # when it was asked for (wall clock), and the seconds its deployment took
    asked: float
    deploy_s: float
    # printed once it runs
    announce: str | None = None


def wait_for_services(state: RunState) -> None:
    """Wait for the services :func:`start_services` deployed without waiting (once: a no-op afterwards)."""
    pending, state.pending_services = state.pending_services, []
    from polyray.cluster import wait_serve_apps

    for service in pending:
        start = time.perf_counter()
        if service.names:
            with console.status(f"waiting for the {service.label} (Ray Serve) to start"):
                wait_serve_apps(service.names, state.run.cluster.resource_wait_s)
        # the run's own time on it: its deployment, then the wait after the stages it ran beside
        key = f"{service.label.replace(' ', '_')}_start"
        state.timer.timings[key] = round(service.deploy_s + time.perf_counter() - start, 2)
        state.trace.mark(service.label, asked=service.asked, ready=time.time())
        if service.announce:
            console.print(service.announce, highlight=False)
    if pending:
        state.trace.write(state.out)


def stop_services(state: RunState) -> None:
    """End the generation service with the run: its replicas answer what they hold, then stop. A failure
    here (the cluster going down with a failed run) is a warning, never what the run reports."""
    from polyray.generation.service import stop_generation

    try:
        with state.timer("generation_service_stop"), console.status("stopping the generation service"):
            stop_generation()
    except Exception as exc:  # noqa: BLE001 - the run's own outcome (or its error) is what counts
        warn(f"the generation service did not stop cleanly: {exc!r}")
    state.serving = False


def launch_pool(state: RunState, store) -> float:
    """The rollout pool in ``state.pool``, its engines starting (ready once :func:`wait_for_pool` returns);
    returns the seconds spent here."""
    from polyray.drivers.warm import launch_run_pool
    from polyray.rollout.pool import RolloutPool

    run, start = state.run, time.perf_counter()
    state.pool_asked = time.time()
    if state.shared_pool and not _workers_alive(state.warm.workers):
        warn("a rollout worker the sweep's trials share is gone (past its restarts): this run starts its own")
        for worker in state.warm.workers:
            ray.kill(worker)
        state.shared_pool = False
    # the sweep's engines, already running: this run's store and no adapters
    if state.shared_pool:
        state.pool = RolloutPool(state.warm.workers)
        state.pool.start_run(store, run.name)
        return time.perf_counter() - start
    with console.status(f"starting {run.rollout.num_workers} vLLM rollout worker(s)"):
        state.pool = launch_run_pool(run, state.model_ref, store)
    return time.perf_counter() - start


def _workers_alive(workers: list, timeout_s: float = 60.0) -> bool:
    """Whether every worker answers (Ray restarts one that died, until its restarts are spent)."""
    try:
        ray.get([w.versions.remote() for w in workers], timeout=timeout_s)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


def wait_for_pool(state: RunState, launched_s: float) -> None:
    """Wait for the engines :func:`launch_pool` started. ``rollout_pool_start`` is the run's own time on them:
    the launch and the wait after the services' start (which ran meanwhile, and has its own timing), so the
    stages still add up to the run's time."""
    start = time.perf_counter()
    with console.status(f"waiting for {state.run.rollout.num_workers} vLLM rollout worker(s) to start"):
        demand = rollout_demand(state.run.rollout, state.run.cluster.worker_resources)
        state.pool.wait_ready(demand, state.run.cluster.resource_wait_s)
    # a run on the sweep's engines only attached to them: its timing says so
    key = "rollout_pool_attach" if state.shared_pool else "rollout_pool_start"
    state.timer.timings[key] = round(launched_s + time.perf_counter() - start, 2)
    if not state.shared_pool:
        try:
            marks = ray.get([w.startup.remote() for w in state.pool.workers])
            state.trace.add_reported("rollout worker", state.pool_asked, marks)
        # a worker lost right after its start: the trace goes without it, the run's own checks handle it
        except ray.exceptions.RayError as exc:
            warn(f"start-up trace: the rollout workers' marks could not be read ({type(exc).__name__})")
    state.trace.write(state.out)


def record_learner_startup(state: RunState) -> None:
    """The kept ranks' start-up marks in the trace, once the first phase has waited for them."""
    group = state.learner
    if group is None or not group.startup or any(name.startswith("learner rank") for name in state.trace.components):
        return
    state.trace.add_reported("learner rank", state.learner_asked, group.startup)
    state.trace.write(state.out)


def start_learner(state: RunState) -> None:
    """The learner's kept ranks (``learner.keep_ranks``) for the first phase still to train, started and
    not waited for; the sweep's, when it keeps some."""
    from polyray.learner.group import LearnerGroup

    run = state.run
    todo = [i for i, p in enumerate(run.phases) if not _trained(state, p.name)]
    if not run.learner.keep_ranks or not todo:
        return
    state.learner = LearnerGroup(state.worker_run, keeper=state.keeper())
    state.learner_asked = time.time()
    state.learner.start(run.phase_workers(todo[0]))


def _trained(state: RunState, phase: str) -> bool:
    """Whether a resumed run holds ``phase``'s adapter (evaluated, or written and not yet evaluated)."""
    done = phase in state.results.evaluations
    return done or (state.resume and (state.out / "adapters" / phase / "polyray_version.json").is_file())


def fit(state: RunState, index: int, version: int, adapter: str | None) -> tuple[int, str]:
    """Phase ``index`` trained from (``version``, ``adapter``), unless a resumed run already holds it;
    its final (version, adapter directory), pinned in the store for good."""
    run, results = state.run, state.results
    phase = run.phases[index]
    adapter_dir = state.out / "adapters" / phase.name
    # trained and evaluated before a resume
    if phase.name in results.evaluations:
        return results.versions[phase.name], share_adapter(state.shared, adapter_dir, phase.name)
    # trained, not yet evaluated
    if state.resume and (adapter_dir / "polyray_version.json").is_file():
        version = json.loads((adapter_dir / "polyray_version.json").read_text())["version"]
        adapter = share_adapter(state.shared, adapter_dir, phase.name)
    else:
        wait_for_services(state)
        with state.timer(f"train_{phase.name}"):
            trained = train_stage(
                state.worker_run,
                index,
                state.model_ref,
                state.out,
                pool=state.pool,
                version=version,
                adapter=adapter,
                tracker=state.tracker,
                logs=state.logs,
                group=state.learner,
            )
        version, adapter = trained["version"], share_adapter(state.shared, Path(trained["adapter_dir"]), phase.name)
        record_learner_startup(state)
        results.stage_done(f"train_{phase.name}")
        write_results(state.out, results)
    # evaluated next, and by anyone later: kept for good
    state.pool.pin(phase.name, version)
    results.versions[phase.name] = version
    return version, adapter


def evaluate(state: RunState, stage: str, version: int | None) -> None:
    """The evaluation of ``stage`` on ``eval.split`` (unless a resumed run holds it), written and reported."""
    results, split = state.results, state.run.eval.split
    if stage in results.evaluations:
        return
    with state.timer(f"eval_{stage}"):
        results.evaluations[stage] = evaluate_stage(
            stage,
            state.pool,
            state.task,
            state.eval_prompts,
            run=state.run,
            version=version,
            split=split,
            model_dir=state.model_dir,
        )
    results.stage_done(f"eval_{stage}")
    write_results(state.out, results)
    if state.tracker is not None:
        state.tracker.log_progress()
        state.tracker.log_stage(stage if split == "test" else f"{stage}/{VAL_EVAL}", results.evaluations[stage])
    if state.on_stage is not None:
        state.on_stage(results)
