"""RolloutWorker: one ``vllm.LLM`` with LoRA enabled, generating groups of samples.

A plain class: usable in-process, and wrapped with ``ray.remote`` by :class:`RolloutPool`.
The base model is loaded once. Adapter versions arrive as tensors (A/B only) with the
content hash the run's adapter store recorded (checked on load), are materialised on tmpfs
and registered as ``LoRARequest(f"policy-v{t}", t, path)``; every generate names the adapter
explicitly and every sample carries the version it used. Only the newest ``keep_versions``
adapters are kept; older ones are removed from vLLM and from disk (generate is synchronous
inside the worker, so none is in use then). A version asked for that the worker lacks (it
was restarted, or evicted it) is pulled from the adapter store
(:mod:`polyray.rollout.store`); a (re)started worker pulls the store's newest version
before it serves, under a new :meth:`~RolloutWorker.incarnation` id (the learner's sync canary
checks a worker whose id changed).

Log-probs are, by default, vLLM's *processed* log-probs of the sampled tokens
(``rollout.logprobs_mode``): those of the distribution it sampled from, softmax(logits / T),
the same quantity the learner computes at the sampling temperature (training phases
require top_p = 1, so no truncation enters). The evaluation job asks for raw (T = 1)
log-probs instead: its ``logprob`` selector ranks candidates by the model's likelihood.

Seeds: each request may carry its own sampling seed (``GenerationRequest.seeds``, one per prompt), so
samples are independent across prompts and reproducible; the engine seed covers the rest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from polyray.config import RolloutConfig, SamplingConfig
from polyray.lifetime import process_dir
from polyray.rollout.request import GenerationRequest
from polyray.rollout.store import AdapterHashError, check_adapter, from_wire, write_adapter_dir


# a KL reference that is the adapter-less base model (GenerationRequest.reference)
BASE_MODEL = ""


class MissingAdapterError(KeyError):
    """A generate named an adapter this worker does not hold and cannot pull (a named adapter after a
    restart, which the pool re-registers; or a version the adapter store does not hold)."""

    def __init__(self, version: int | None = None, name: str | None = None):
        super().__init__(version if name is None else name)
        self.version, self.name = version, name


@dataclass
class Sample:
    # index into the prompts passed to generate
    prompt_index: int
    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    # log pi_old of each sampled token
    logprobs: list[float]
    # adapter version that produced it (0 = base model)
    version: int
    # ended on EOS/stop rather than max_tokens
    finished: bool
    # log pi_ref of each sampled token when the request named a KL reference (GenerationRequest.reference);
    # None: not asked, or the sequence fills the model length (vLLM cannot score it as a prompt)
    ref_logprobs: list[float] | None = None
    # 1 on the tokens the learner trains on: None, all of them; a multi-turn episode's marks its model turns
    # only (polyray.rollout.episodes)
    loss_mask: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vllm_env(kv_cache_gib: int, threads: int, gpu: bool = False, eager: bool = True) -> dict[str, str]:
    """Environment a vLLM process needs before vLLM/torch import: capped threads, and on CPU the KV cache
    size and no thread pinning (cores are shared); vLLM's CPU variables are set on CPU alone.

    An eager engine on CPU also runs with TorchDynamo off: vLLM still ``torch.compile``s its sampler's
    token-rank count (``batched_count_greater_than``, an integer count the same either way), and each
    engine process would pay that compile at its first log-probs (docs/benchmarks-notes.md)."""
    cpu = {} if gpu else {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    if not gpu and eager:
        cpu["TORCHDYNAMO_DISABLE"] = "1"
    return {
        **cpu,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def rollout_env(config: RolloutConfig) -> dict[str, str]:
    """A rollout worker's vLLM environment. On CPU the engine runs inside the worker's process: no extra
    engine-core process per worker. On GPU vLLM keeps its engine core in a process of its own, which
    schedules the next step while the GPU runs this one (vLLM's default)."""
    if config.gpus_per_worker > 0:
        return vllm_env(config.kv_cache_gib, config.threads, gpu=True)
    eager = device_engine_args(0, config.enforce_eager, config.gpu_memory_utilization)["enforce_eager"]
    return {**vllm_env(config.kv_cache_gib, config.threads, eager=eager), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def device_engine_args(gpus: float, enforce_eager: bool | None, gpu_memory_utilization: float) -> dict[str, Any]:
    """The vLLM engine arguments that depend on the device, for an engine on ``gpus`` GPUs (0: CPU).

    CPU: eager mode unless set (vLLM's compiled CPU path was the slower on rollout-sized batches:
    docs/benchmarks.md). GPU: vLLM's default unless set, torch.compile and CUDA graphs (eager decoding
    launches every kernel from Python), and the configured share of each GPU's memory."""
    if gpus <= 0:
        return {"enforce_eager": True if enforce_eager is None else enforce_eager}
    return {"enforce_eager": bool(enforce_eager), "gpu_memory_utilization": gpu_memory_utilization}


def start_engine(model_dir: str, config: RolloutConfig, dtype: str, **overrides: Any):
    """vLLM imported and a rollout engine built on ``model_dir`` (``overrides``: more ``vllm.LLM`` arguments),
    with no collector passes over the growing heap and without scikit-learn (polyray.imports)."""
    from polyray.imports import paused_gc, without_sklearn

    with paused_gc(), without_sklearn():
        from vllm import LLM

        return LLM(**engine_kwargs(model_dir, config, dtype), **overrides)


def engine_kwargs(model_dir: str, config: RolloutConfig, dtype: str) -> dict[str, Any]:
    """A rollout worker's ``vllm.LLM`` arguments (LoRA on; on CPU whole prompts per step, on GPU vLLM's own
    step with chunked prefill unless ``max_num_batched_tokens`` is set)."""
    step = config.max_num_batched_tokens
    if step is None and config.gpus_per_worker == 0:
        step = config.max_num_seqs * config.max_model_len
    return dict(
        model=str(model_dir),
        enable_lora=True,
        max_lora_rank=config.max_lora_rank,
        max_loras=config.max_loras,
        dtype=dtype,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=step,
        seed=config.seed,
        **device_engine_args(config.gpus_per_worker, config.enforce_eager, config.gpu_memory_utilization),
        logprobs_mode=config.logprobs_mode,
        # one engine over the worker's GPUs; its shard processes are vLLM's own (Ray placed the actor)
        tensor_parallel_size=config.tensor_parallel_size,
        distributed_executor_backend="mp" if config.tensor_parallel_size > 1 else None,
    )


def sampling_params(n: int, sampling: SamplingConfig, seed: int | None):
    """vLLM ``SamplingParams`` of a rollout request: ``n`` samples with the log-prob of each sampled token.

    Token ids only, unless a stop string needs vLLM's text to match against: its detokenizer runs at
    every engine step, and turns every log-prob's token into a string too, which the rollouts never
    read (6-8% of a quickstart batch's time: docs/benchmarks.md); :func:`decode_completions` then
    writes each completion's text once."""
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        logprobs=0,
        seed=seed,
        stop=list(sampling.stop) or None,
        detokenize=bool(sampling.stop),
    )


# prompt tokens a completion is decoded after
DECODE_CONTEXT_TOKENS = 4


def decode_completions(tokenizer, prompt_ids: list[int], completions: list[list[int]]) -> list[str]:
    """Each completion's text as vLLM's detokenizer writes it: decoded after the prompt's last tokens
    (a tokenizer that drops the leading space of a text, as SentencePiece's do, keeps the completion's),
    special tokens skipped, no clean-up of spaces. A completion whose decode in context does not start
    with the context's own (a character cut between prompt and completion) is decoded alone."""
    context = list(prompt_ids[-DECODE_CONTEXT_TOKENS:])
    options = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    prefix = tokenizer.decode(context, **options)
    texts = tokenizer.batch_decode([context + list(ids) for ids in completions], **options)
    return [
        text[len(prefix) :] if text.startswith(prefix) else tokenizer.decode(list(ids), **options)
        for text, ids in zip(texts, completions)
    ]


# metric name -> description (polyray.telemetry.Metrics; tags: run, worker)
GAUGES = {
    "polyray_rollout_worker_tokens_per_s": "Completion tokens per second of the worker's last generate call.",
    "polyray_rollout_requests_in_flight": "Generate calls the worker is running (its engine batches each call).",
    "polyray_rollout_adapter_versions": "Adapter versions the worker holds.",
}
HISTOGRAMS = {
    "polyray_rollout_adapter_load_seconds": (
        "Seconds to load one adapter version (hash check + write).",
        [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    ),
}
COUNTERS = {"polyray_rollout_completion_tokens": "Completion tokens the worker generated."}


def _resolve_store(store):
    """An AdapterStore handle as given, or the live actor of that name (None when there is none)."""
    if not isinstance(store, str):
        return store
    import ray

    from polyray.rollout.store import STORE_NAMESPACE

    try:
        return ray.get_actor(store, namespace=STORE_NAMESPACE)
    # no run holds the name now
    except ValueError:
        return None


class RolloutWorker:
    def __init__(
        self,
        model_dir,
        config: RolloutConfig,
        dtype: str = "float32",
        keep_versions: int | None = None,
        store=None,
        tags: dict[str, str] | None = None,
    ):
        init_started = time.time()
        for key, value in rollout_env(config).items():
            os.environ.setdefault(key, value)
        from polyray.telemetry import Metrics

        self.metrics = Metrics({"run": "", "worker": "0", **(tags or {})}, GAUGES, HISTOGRAMS, COUNTERS)

        # Ray runs __init__ again when it restarts the actor: a new id per process that serves
        self._incarnation = uuid.uuid4().hex
        self.config = config
        self.keep_versions = keep_versions or config.max_loras
        from polyray.storage import node_path

        # a reference into cluster.storage: copied to this node's cache first (once per node)
        self.llm = start_engine(node_path(model_dir), config, dtype)
        # the completions' texts (decode_completions)
        self.tokenizer = self.llm.get_tokenizer()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        # in this process's own directory: a SIGKILLed worker's is swept by the next to start (polyray.lifetime)
        self.adapter_root = Path(tempfile.mkdtemp(prefix="adapters-", dir=process_dir("polyray-adapters", shm)))
        # version -> (directory, content hash)
        self.adapters: dict[int, tuple[Path, str]] = {}
        # name -> (lora id, path) for saved adapters
        self.named: dict[str, tuple[int, Path]] = {}
        # the run's AdapterStore actor, or None (the evaluation job: named adapters only); or its actor name,
        # which a pool shared by a sweep's trials gives (each trial's store takes it: a restart finds the current one)
        self.store_name = store if isinstance(store, str) else None
        self.store = _resolve_store(store)
        self._pull_newest()
        from polyray.telemetry import startup_marks

        self._startup = startup_marks(init_started)

    def startup(self) -> dict[str, float]:
        """When this worker's process and engine started, and when it was ready (the run's start-up trace)."""
        return self._startup

    def _pull_newest(self) -> None:
        """Serve the newest published weights from the first call ((re)started, or a new run's store)."""
        if self.store is not None:
            import ray

            newest = ray.get(self.store.newest_stored.remote())
            if newest:
                self._pull(newest)

    def start_run(self, tags: dict[str, str]) -> None:
        """Serve a new run of a sweep (a pool its trials share): every adapter of the last one dropped, the
        prefix cache emptied (version ids start again, under other weights), and the run's store found by
        the name the worker was given; the engine is the same. ``tags``: the new run's metric tags."""
        from polyray.telemetry import Metrics

        for version in list(self.adapters):
            self._drop(version)
        for lora_id, _ in self.named.values():
            self._remove_lora(lora_id)
        self.named.clear()
        # ids start again under other weights: an adapter or a cached prefix left would be served as the new run's
        left = self.llm.llm_engine.list_loras()
        if left or not self.llm.reset_prefix_cache():
            raise RuntimeError(f"rollout worker: the last run's adapters {sorted(left)} or cached prefixes remain")
        self.metrics = Metrics({"run": "", "worker": "0", **tags}, GAUGES, HISTOGRAMS, COUNTERS)
        self.store = _resolve_store(self.store_name)
        self._pull_newest()

    # ---- adapters ---------------------------------------------------------------------------
    def load_adapter(self, version: int, adapter: dict[str, Any], sha256: str | None = None) -> int:
        """Register ``adapter`` ({"config": peft config dict, "tensors": {name: tensor}}) as ``version``.

        ``sha256``: the hash the adapter store recorded for this id; the tensors must match it. An id
        already held is kept if the hash agrees, refused otherwise (an id means one set of weights)."""
        if version < 1:
            raise ValueError(f"adapter versions start at 1, got {version}")
        started = time.perf_counter()
        # as the pool sends it (polyray.rollout.store.to_wire)
        adapter = from_wire(adapter)
        # hashed once per load
        sha = check_adapter(adapter, version, sha256)
        if version in self.adapters:
            if self.adapters[version][1] != sha:
                raise AdapterHashError(f"adapter version {version} is already loaded with other weights")
            return version
        path = self.adapter_root / f"policy-v{version}"
        write_adapter_dir(path, adapter)
        self.adapters[version] = (path, sha)
        self._evict_old(keep=version)
        self.metrics.observe("polyray_rollout_adapter_load_seconds", time.perf_counter() - started)
        self.metrics.set("polyray_rollout_adapter_versions", len(self.adapters))
        return version

    def _pull(self, version: int) -> None:
        """Load ``version`` from the adapter store (hash-checked); MissingAdapterError if it has none."""
        import ray

        got = ray.get(self.store.get.remote(version)) if self.store is not None else None
        if got is None:
            raise MissingAdapterError(version)
        adapter, record = got
        self.load_adapter(version, adapter, record.sha256)

    def add_named_adapter(self, name: str, path: str) -> None:
        """Register a saved peft adapter directory (or its reference in ``cluster.storage``, copied to this
        node) under ``name`` (ids above any policy version)."""
        from polyray.storage import node_path

        if name not in self.named:
            self.named[name] = (1_000_000 + len(self.named), Path(node_path(path)))

    def _evict_old(self, keep: int) -> None:
        """Drop the oldest versions past ``keep_versions``, never ``keep`` (the one just loaded: an
        older version pulled for a request is used right after)."""
        others = sorted(v for v in self.adapters if v != keep)
        for version in others[: max(0, len(others) - (self.keep_versions - 1))]:
            self._drop(version)

    def _drop(self, version: int) -> None:
        self._remove_lora(version)
        shutil.rmtree(self.adapters.pop(version)[0], ignore_errors=True)

    def _remove_lora(self, lora_id: int) -> None:
        try:
            self.llm.llm_engine.remove_lora(lora_id)
        # never loaded into vLLM (no request used it): nothing to remove
        except Exception:
            pass

    def versions(self) -> list[int]:
        return sorted(self.adapters)

    def incarnation(self) -> str:
        """This worker process's id, new each time the worker starts: Ray restarts a dead worker under
        the same actor handle, so a caller compares ids to learn that it restarted (and serves
        weights it pulled from the store, not the ones the pool sent it)."""
        return self._incarnation

    def node(self) -> str:
        """The id of the Ray node this worker process runs on (it changes when Ray restarts the worker
        elsewhere, e.g. after its node was lost)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def _lora_request(self, version: int | None, adapter_name: str | None):
        from vllm.lora.request import LoRARequest

        if adapter_name is not None:
            if adapter_name not in self.named:
                raise MissingAdapterError(name=adapter_name)
            lora_id, path = self.named[adapter_name]
            return LoRARequest(adapter_name, lora_id, str(path))
        if not version:
            return None
        if version not in self.adapters:
            self._pull(version)
        return LoRARequest(f"policy-v{version}", version, str(self.adapters[version][0]))

    # ---- generation -------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> list[list[Sample]]:
        """``request.n`` samples for each of its prompts under its adapter (``version``, None/0 = the base model,
        or the named ``adapter_name``), each prompt with its own seed when ``request.seeds`` is given.

        ``request.reference``: also score every sample under the KL reference, right after sampling, into its
        ``ref_logprobs`` (:meth:`score_sequences`): ``BASE_MODEL`` for the adapter-less base, else the name of
        an adapter added with :meth:`add_named_adapter`. None: not scored."""
        prompts, n, sampling, seeds = request.prompts, request.n, request.sampling, request.seeds
        version, adapter_name, reference = request.version, request.adapter_name, request.reference
        params = (
            sampling_params(n, sampling, None) if seeds is None else [sampling_params(n, sampling, s) for s in seeds]
        )
        lora = self._lora_request(version, adapter_name)
        self.metrics.set("polyray_rollout_requests_in_flight", 1)
        started = time.perf_counter()
        try:
            outputs = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        finally:
            self.metrics.set("polyray_rollout_requests_in_flight", 0)
        tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
        self.metrics.inc("polyray_rollout_completion_tokens", tokens)
        self.metrics.set("polyray_rollout_worker_tokens_per_s", tokens / max(time.perf_counter() - started, 1e-9))
        used = 0 if adapter_name is not None else (version or 0)
        groups = []
        for index, out in enumerate(outputs):
            completions = [list(comp.token_ids) for comp in out.outputs]
            texts = (
                [comp.text for comp in out.outputs]
                if sampling.stop
                else decode_completions(self.tokenizer, out.prompt_token_ids, completions)
            )
            group = []
            for comp, token_ids, text in zip(out.outputs, completions, texts):
                logprobs = [step[tok].logprob for step, tok in zip(comp.logprobs, token_ids)]
                group.append(
                    Sample(
                        prompt_index=index,
                        text=text,
                        prompt_token_ids=list(out.prompt_token_ids),
                        token_ids=token_ids,
                        logprobs=logprobs,
                        version=used,
                        finished=comp.finish_reason == "stop",
                    )
                )
            groups.append(group)
        if reference is not None:
            samples = [s for group in groups for s in group]
            scored = self.score_sequences([(s.prompt_token_ids, s.token_ids) for s in samples], reference=reference)
            for sample, logprobs in zip(samples, scored):
                sample.ref_logprobs = logprobs
        return groups

    def score(self, prompt_ids: list[int], completion_ids: list[int], version: int | None = None) -> list[float]:
        """Log-probs of a fixed completion's tokens under adapter ``version`` (vLLM prompt log-probs)."""
        logprobs = self.score_sequences([(prompt_ids, completion_ids)], version)[0]
        if logprobs is None:
            raise ValueError(
                f"{len(prompt_ids) + len(completion_ids)} tokens: no room for the token vLLM needs past"
                f" them within rollout.max_model_len {self.config.max_model_len}"
            )
        return logprobs

    def score_sequences(
        self, sequences: list[tuple[list[int], list[int]]], version: int | None = None, reference: str | None = None
    ) -> list[list[float] | None]:
        """Each (prompt, completion) token-id pair's completion log-probs at temperature 1, in one engine call:
        vLLM's prompt log-probs of prompt + completion (its sampler is skipped, so no temperature enters)
        under adapter ``version``, or under ``reference`` (``BASE_MODEL`` or a named adapter) when given.
        None for a sequence that fills the model length: vLLM takes no prompt without room for one token."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        lora = self._lora_request(version, None) if reference is None else self._lora_request(None, reference or None)
        # ids only: no detokenizing
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
        ids = [list(p) + list(c) for p, c in sequences]
        fits = [i for i, seq in enumerate(ids) if len(seq) < self.config.max_model_len]
        outs = (
            self.llm.generate(
                [TokensPrompt(prompt_token_ids=ids[i]) for i in fits], params, lora_request=lora, use_tqdm=False
            )
            if fits
            else []
        )
        result: list[list[float] | None] = [None] * len(ids)
        for i, out in zip(fits, outs):
            start = len(sequences[i][0])
            result[i] = [out.prompt_logprobs[t][ids[i][t]].logprob for t in range(start, len(ids[i]))]
        return result

    def draw(self, prompt_ids: list[int], sampling: SamplingConfig, version: int | None, seed: int) -> Sample:
        """One sample after the token ids ``prompt_ids`` under adapter ``version``, drawn as rollouts
        are (the decode path, ``sampling``'s temperature, log-probs in ``rollout.logprobs_mode``):
        the sync canary's check at a phase's sampling temperature. :meth:`score` cannot serve it:
        vLLM's prompt log-probs skip the sampler, so they are at temperature 1 whatever is asked."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        return self.generate(
            GenerationRequest(prompts=[prompt], n=1, sampling=sampling, version=version, seeds=[seed])
        )[0][0]

    def close(self) -> None:
        shutil.rmtree(self.adapter_root, ignore_errors=True)
