"""Run the learner's phase classes without Ray or vLLM: a tiny random-init Qwen3, peft LoRA, stand-in pools.

Needs only PyTorch, transformers, peft and polyray's light dependencies, so the same code
drives the multi-rank gloo equivalence test on CPU and the GPU step test on a bare CUDA
machine. Two stand-ins for the rollout pool:

- :class:`FixedPool`: deterministic samples (token ids from a seeded RNG per prompt and
  sample, a fixed log-prob per token), so a one-rank and a multi-rank run see the same data;
- :class:`GeneratePool`: real samples from transformers' ``generate`` on the learner's own
  model, with the processed (post-temperature) log-probs of the drawn tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from polyray.config import (
    ExpertIterationPhaseConfig,
    GRPOPhaseConfig,
    LoraConfig,
    PolychromicSFTPhaseConfig,
    SFTPhaseConfig,
    TinyModelConfig,
)
from polyray.config.phases import DPOPhaseConfig
from polyray.config.tasks import CountdownTaskConfig
from polyray.rollout.worker import Sample
from polyray.tasks import build_task

TASK = CountdownTaskConfig(n_train=64)


def tiny_model_dir(root: Path) -> Path:
    """A random-init tiny Qwen3 with its own tokenizer (no pretraining): seconds to build."""
    from polyray.models.tiny import build_tiny_model

    tiny = TinyModelConfig(pretrain_steps=0, pretrain_prompts=200, num_layers=2, hidden_size=64, intermediate_size=128)
    return build_tiny_model(tiny, TASK, Path(root) / "tiny-model")


def build_policy(model_dir: Path, device: str = "cpu", seed: int = 0, gradient_checkpointing: bool = False):
    """peft LoRA model with a non-trivial adapter (peft initialises B = 0, which zeroes A's gradients)."""
    from polyray.learner.lora import build_peft_model

    torch.manual_seed(seed)
    model, tokenizer = build_peft_model(
        str(model_dir), LoraConfig(r=4, alpha=8), gradient_checkpointing=gradient_checkpointing
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.to(device), tokenizer


def random_lora_policy(model_dir, lora, seed: int, std: float = 0.02):
    """(peft model, tokenizer) with lora_B ~ N(0, std) after ``torch.manual_seed(seed)``: a non-trivial
    adapter (peft initialises B = 0), the same weights for the same seed."""
    from polyray.learner.lora import build_peft_model

    torch.manual_seed(seed)
    model, tokenizer = build_peft_model(str(model_dir), lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return model, tokenizer


def fake_run(run, model_dir, run_config, init_adapter=None):
    """A run directory with adapters/{sft,grpo} (different random LoRAs) and its config.resolved.yaml."""
    from polyray.io import dump_config
    from polyray.learner.lora import save_adapter

    for seed, phase in enumerate(("sft", "grpo")):
        model, _ = random_lora_policy(model_dir, run_config.learner.lora, seed, std=0.05)
        save_adapter(model, run / "adapters" / phase)
    (run / "config.resolved.yaml").write_text(dump_config(run_config.model_copy(update={"init_adapter": init_adapter})))
    return run


def learner_logprobs(model, prompt_ids, completion_ids, pad_id):
    """The learner's log-probs of ``completion_ids`` after ``prompt_ids`` (no grad)."""
    from polyray.models.batching import pack_sequences, token_logprobs

    batch = pack_sequences([prompt_ids], [completion_ids], pad_id)
    with torch.no_grad():
        logp, mask = token_logprobs(model, batch)
    return logp[0][mask[0].bool()]


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self, retries: int = 1):
        return self.value


class FixedPool:
    """Deterministic stand-in for the rollout pool: the same samples for the same prompts, every time."""

    def __init__(self, tokenizer, max_tokens: int = 5, logprob: float = -1.5, version: int = 1):
        self.tokenizer, self.max_tokens, self.logprob, self.version = tokenizer, max_tokens, logprob, version

    def submit(self, request):
        return _Done(self.generate(request))

    def generate(self, request):
        if request.reference is not None:
            raise NotImplementedError(
                "FixedPool scores no KL reference (tests/unit/learner/test_kl_reference.py has one that does)"
            )
        vocab = len(self.tokenizer)
        groups = []
        for i, text in enumerate(request.prompts):
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            group = []
            for j in range(request.n):
                rng = random.Random(f"{text}:{j}")
                length = rng.randint(1, self.max_tokens)  # unequal lengths exercise padding and the aggregations
                ids = [rng.randrange(vocab) for _ in range(length)]
                text_out = self.tokenizer.decode(ids)
                group.append(Sample(i, text_out, prompt_ids, ids, [self.logprob] * length, request.version or 0, True))
            groups.append(group)
        return groups


class GeneratePool:
    """Samples from transformers' ``generate`` on the policy itself, with processed log-probs."""

    def __init__(self, model, tokenizer, version: int = 1):
        self.model, self.tokenizer, self.version = model, tokenizer, version

    def submit(self, request):
        return _Done(self.generate(request))

    @torch.no_grad()
    def generate(self, request):
        if request.reference is not None:
            raise NotImplementedError("GeneratePool scores no KL reference")
        n, sampling = request.n, request.sampling
        model = getattr(self.model, "module", self.model)
        device = next(model.parameters()).device
        groups = []
        for i, text in enumerate(request.prompts):
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out = model.generate(
                input_ids=torch.tensor([prompt_ids] * n, device=device),
                attention_mask=torch.ones(n, len(prompt_ids), dtype=torch.long, device=device),
                do_sample=True,
                temperature=sampling.temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=sampling.max_tokens,
                return_dict_in_generate=True,
                output_scores=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            steps = torch.stack(out.scores, dim=1).float().log_softmax(-1)  # (n, L, V) processed log-probs
            group = []
            for j in range(n):
                ids = out.sequences[j, len(prompt_ids) :].tolist()
                if self.tokenizer.eos_token_id in ids:
                    ids = ids[: ids.index(self.tokenizer.eos_token_id) + 1]
                logprobs = [float(steps[j, t, tok]) for t, tok in enumerate(ids)]
                group.append(
                    Sample(i, self.tokenizer.decode(ids), prompt_ids, ids, logprobs, request.version or 0, True)
                )
            groups.append(group)
        return groups


def text_reward(prompts, texts) -> torch.Tensor:
    """A deterministic graded reward of the completion text: (B, G) float64."""
    return torch.tensor([[(len(t) % 4) / 3 for t in g] for g in texts], dtype=torch.float64)


def first_group_reward(prompts, texts) -> torch.Tensor:
    """Only the first group's rewards differ: dynamic sampling keeps one group, fewer sequences than 3 ranks."""
    return torch.tensor(
        [[float(j % 2) if b == 0 else 1.0 for j in range(len(g))] for b, g in enumerate(texts)], dtype=torch.float64
    )


REWARDS = {"grpo_dynamic_sampling": first_group_reward}
OFF_POLICY_CASES = ("grpo_learner_old", "grpo_tis", "grpo_mis", "grpo_seq_tis")
# the stand-in engine's log-prob of every token: near the tiny policy's own on random tokens, so the
# off-policy cases' ratios fall on both sides of 1 and some outside [1/cap, cap]
POOL_LOGPROBS = dict.fromkeys(OFF_POLICY_CASES, -6.0)
MISMATCH_METRICS = ("mismatch_k3", "mismatch_abs", "mismatch_seq_max", "mismatch_out_frac", "is_weight_mean")


PHASE_CASES: dict[str, Any] = {
    "sft": SFTPhaseConfig(steps=1, batch_size=5),
    "polychromic_sft": PolychromicSFTPhaseConfig(
        steps=1, batch_size=5, prompts_per_step=3, n_samples=3, lam=0.5, diversity="countdown_expr"
    ),
    **{
        f"grpo_{mode}": GRPOPhaseConfig(
            steps=1,
            prompts_per_step=3,
            group_size=3,
            aggregation=mode,
            kl_beta=0.1,
            kl_reference="base",
            sampling={"max_tokens": 5},
        )
        for mode in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
    },
    "grpo_dynamic_sampling": GRPOPhaseConfig(
        steps=1, prompts_per_step=3, group_size=2, dynamic_sampling=True, sampling={"max_tokens": 5}
    ),
    # the buffer: text_reward's correct samples (reward 1) of 4 draws on each training prompt
    "grpo_rehearsal": GRPOPhaseConfig(
        steps=1,
        prompts_per_step=3,
        group_size=3,
        kl_beta=0.0,
        sampling={"max_tokens": 5},
        rehearsal={"gamma": 0.5, "samples_per_prompt": 4, "batch_size": 5},
    ),
    # pi_old from the learner, and each engine-mismatch correction (the pool's log-probs are the "engine")
    **{
        ("grpo_learner_old" if correction == "none" else f"grpo_{correction}"): GRPOPhaseConfig(
            steps=1,
            prompts_per_step=3,
            group_size=3,
            kl_beta=0.1,
            kl_reference="base",
            sampling={"max_tokens": 5},
            off_policy={"old_logprobs": "learner", "correction": correction, "cap": cap},
        )
        # caps that the stand-in engine's ratios (per token; per sequence for seq_tis) cross
        for correction, cap in (("none", 2.0), ("tis", 1.5), ("mis", 1.5), ("seq_tis", 1.1))
    },
    "expert_iteration": ExpertIterationPhaseConfig(
        steps=1, batch_size=5, buffer={"samples_per_prompt": 4}, sampling={"max_tokens": 5}
    ),
    # against the adapter-disabled base, which the non-zero test adapter is away from: margins are not 0
    "dpo": DPOPhaseConfig(
        steps=1, prompts_per_step=3, group_size=3, beta=0.5, reference="base", sampling={"max_tokens": 5}
    ),
}


def make_phase(
    cfg,
    model,
    tokenizer,
    rank: int,
    world: int,
    pool,
    reference_adapter: str | None = None,
    reward_fn=None,
    micro_batch_tokens: int | None = None,
    logits_chunk_mib: float = 256,
    share_prompts: bool = False,
    pack_samples: bool = True,
    init_source: str | None = None,
    env=None,
):
    from polyray.learner.phases import StepContext, phase_class

    ctx = StepContext(
        model=model,
        tokenizer=tokenizer,
        rank=rank,
        world=world,
        seed=0,
        reward_fn=reward_fn or text_reward,
        reference_adapter=reference_adapter,
        micro_batch_tokens=micro_batch_tokens,
        logits_chunk_mib=logits_chunk_mib,
        share_prompts=share_prompts,
        pack_samples=pack_samples,
        init_source=init_source,
        env=env,
    )
    return phase_class(cfg)(cfg, task=build_task(TASK), n_train=TASK.n_train, ctx=ctx, pool=pool if rank == 0 else None)


def lora_grads(model) -> dict[str, torch.Tensor]:
    module = getattr(model, "module", model)
    return {n: p.grad.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def step_grads(
    model_dir: Path,
    name: str,
    rank: int = 0,
    world: int = 1,
    device: str = "cpu",
    wrap_ddp: bool = False,
    dtype: torch.dtype = torch.float32,
    **step_options,
):
    """(gradients of the LoRA parameters, metrics) after one ``phase.step`` of case ``name`` (the step runs
    its own backward passes). ``step_options``: ``micro_batch_tokens``, ``logits_chunk_mib``, ``share_prompts``,
    ``pack_samples``."""
    model, tokenizer = build_policy(model_dir, device)
    model = model.to(dtype)
    if wrap_ddp:  # as the learner wraps it (polyray.learner.loop._setup_model)
        from polyray.learner.loop import ddp_options

        device_ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_options())
    phase = make_phase(
        PHASE_CASES[name],
        model,
        tokenizer,
        rank,
        world,
        FixedPool(tokenizer, logprob=POOL_LOGPROBS.get(name, -1.5)),
        reward_fn=REWARDS.get(name),
        **step_options,
    )
    metrics = phase.step(0, 1)
    return lora_grads(model), metrics


def ddp_worker(
    rank: int,
    world: int,
    port: int,
    model_dir: str,
    names: list[str],
    out: str,
    options: dict | None = None,
    device: str = "cpu",
) -> None:
    """``torch.multiprocessing.spawn`` target: every case's gradients on ``world`` ranks (gloo on the CPU;
    with ``device`` "cuda", NCCL with a GPU a rank); rank 0 saves them. ``options``: :func:`step_grads`
    keywords (``dtype``, ``micro_batch_tokens``, ``logits_chunk_mib``)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {
            name: _cpu(step_grads(Path(model_dir), name, rank, world, device, wrap_ddp=True, **(options or {})))
            for name in names
        }
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


# what every rank imports, once, in the server the ranks are forked from
RANK_PRELOAD = ["support.rank_preload", "support.phase_harness", "polyray.learner.loop"]


def spawn_ranks(fn, args: tuple, nprocs: int) -> None:
    """``fn(rank, *args)`` on ``nprocs`` processes, as ``torch.multiprocessing.spawn`` runs it, but each forked
    from multiprocessing's forkserver, which imports :data:`RANK_PRELOAD` once for this test process instead of
    once a rank. The forkserver starts with this process's environment at the first call."""
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.set_forkserver_preload(RANK_PRELOAD)
    mp.start_processes(fn, args=args, nprocs=nprocs, start_method="forkserver")


def multi_rank_grads(
    model_dir: Path, world: int, names: list[str], out: Path, options: dict | None = None, device: str = "cpu"
) -> dict:
    """Every case's :func:`step_grads` on ``world`` ranks under DDP (spawned processes; gloo, or NCCL on one
    GPU each with ``device`` "cuda"), as rank 0 saw them."""
    from polyray.http import free_port

    spawn_ranks(ddp_worker, (world, free_port(), str(model_dir), names, str(out), options, device), world)
    return torch.load(out)


def _cpu(result):
    """(gradients, metrics) with the gradients moved to the CPU, to be saved and compared anywhere."""
    grads, metrics = result
    return {k: g.cpu() for k, g in grads.items()}, metrics


class AdapterPool(GeneratePool):
    """A stand-in rollout pool with its own copy of the policy, as a rollout worker has: publishes load
    the learner's adapter into it (versions count up), and samples come from ``generate`` on it."""

    def __init__(self, model_dir: Path, adapter_dir: str | None, version: int, device: str = "cpu"):
        from polyray.learner.lora import build_peft_model

        model, tokenizer = build_peft_model(str(model_dir), LoraConfig(r=4, alpha=8), adapter_dir=adapter_dir)
        super().__init__(model.to(device).eval(), tokenizer, version)

    def newest_version(self) -> int:
        return self.version

    def publish_next(self, adapter: dict, phase: str, step: int) -> tuple[int, float]:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, adapter["tensors"])
        self.version += 1
        return self.version, 0.0

    def start_publish(self, adapter: dict, phase: str, step: int) -> LoadedPublish:
        """The publish, loaded at once (this stand-in samples in the caller's process)."""
        return LoadedPublish(self.publish_next(adapter, phase, step)[0])


class LoadedPublish:
    """:class:`~polyray.rollout.pool.PendingPublish` of a publish already loaded: one worker, never restarted."""

    def __init__(self, version: int):
        self.version = version

    def result(self) -> list[str]:
        return ["0"]


class LocalSession:
    """The learner worker's :class:`~polyray.learner.loop.TrainSession` in a plain ``torch.distributed`` group
    (gloo on CPU, NCCL on CUDA; one process, or rank ``rank`` of ``world`` meeting at ``port``), without Ray:
    checkpoints are copied to
    ``storage`` as reported, and the latest is where the next attempt resumes. ``fail_at``: at the
    checkpoint of that step, raise before it is stored (a worker dying after the step's logs, before
    its checkpoint: the next attempt redoes the steps since the previous one). ``die_after``: at the
    checkpoint of that step, raise once it is stored (a worker dying right after it: at the last step,
    before the phase's final adapter is saved)."""

    def __init__(
        self,
        storage: Path,
        device: str = "cpu",
        fail_at: int | None = None,
        die_after: int | None = None,
        rank: int = 0,
        world: int = 1,
        port: int | None = None,
    ):
        import socket

        import torch.distributed as dist

        self.storage, self.device, self.fail_at, self.die_after = Path(storage), device, fail_at, die_after
        self.rank, self.world = rank, world
        self.model = None  # the wrapped model, once prepared (a test reads the rank's weights from it)
        self.storage.mkdir(parents=True, exist_ok=True)
        if not dist.is_initialized():
            if port is None:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    @contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        saved = sorted(self.storage.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        yield str(saved[-1]) if saved else None

    def prepare_model(self, model):
        model = model.to(self.device)
        device_ids = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else None
        from polyray.learner.loop import ddp_options

        self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_options())
        return self.model

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import shutil

        if metrics["step"] == self.fail_at:
            raise RuntimeError(f"learner worker killed at its step-{self.fail_at} checkpoint")
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, self.storage / f"step-{metrics['step']}")
        if metrics["step"] == self.die_after:
            raise RuntimeError(f"learner worker killed after its step-{self.die_after} checkpoint")

    def telemetry(self, run: str, phase: str):
        return None


def run_sft_then_grpo(model_dir: Path, out: Path, device: str = "cpu", dtype: str = "float32") -> dict:
    """The learner's worker function (polyray.learner.loop.run_worker) for an SFT phase, then a GRPO
    phase from SFT's adapter (phase-start KL reference, micro-batches, ``AdapterPool`` rollouts) whose
    first attempt dies at its step-4 checkpoint and whose second resumes from step 2's. Returns what the
    checks need: the run config, the output dir, the GRPO checkpoint storage."""
    from polyray.config import RunConfig
    from polyray.learner.job import LearnerJob
    from polyray.learner.loop import run_rank

    run = RunConfig(
        model={"dtype": dtype},
        task=TASK.model_dump(),
        learner={
            "num_workers": 1,
            "use_gpu": device.startswith("cuda"),
            "micro_batch_tokens": 32,
            "sync_check_every": 0,
            "lora": {"r": 4, "alpha": 8},
        },
        phases=[
            {"type": "sft", "name": "sft", "steps": 3, "batch_size": 4, "checkpoint_every": 2},
            {
                "type": "grpo",
                "name": "grpo",
                "steps": 4,
                "prompts_per_step": 2,
                "group_size": 3,
                "kl_beta": 0.05,
                "kl_reference": "phase_start",
                "checkpoint_every": 2,
                "lr_schedule": "cosine",
                "warmup_steps": 1,
                "sampling": {"max_tokens": 6},
            },
        ],
    )
    run_rank(
        LearnerJob.for_phase(run, 0, model_dir=str(model_dir), output_dir=str(out)),
        LocalSession(out / "checkpoints" / "sft", device),
    )
    sft = out / "adapters" / "sft"
    pool = AdapterPool(model_dir, str(sft), version=1, device=device)
    grpo = LearnerJob.for_phase(
        run,
        1,
        model_dir=str(model_dir),
        output_dir=str(out),
        pool=pool,
        start_version=1,
        init_adapter=str(sft),
    )
    storage = out / "checkpoints" / "grpo"
    try:
        run_rank(grpo, LocalSession(storage, device, fail_at=4))
    except RuntimeError as exc:
        assert "killed at its step-4 checkpoint" in str(exc)
    else:
        raise AssertionError("the first GRPO attempt should have died")
    run_rank(grpo, LocalSession(storage, device))
    return {"run": run, "out": out, "storage": storage, "pool": pool}


def check_two_phase_run(result: dict) -> None:
    """What the scenario must leave behind, on any device."""
    from safetensors.torch import load_file

    from polyray.io import read_log_jsonl

    out, storage = result["out"], result["storage"]
    rows = read_log_jsonl(out / "metrics.jsonl")
    sft = [r for r in rows if r["phase"] == "sft"]
    grpo = [r for r in rows if r["phase"] == "grpo"]
    assert [r["step"] for r in sft] == [1, 2, 3] and [r["step"] for r in grpo] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in rows)
    assert abs(grpo[0]["kl"]) <= 1e-6  # the reference is the phase-start (SFT) adapter
    assert grpo[0]["lr"] == 0.0 and grpo[1]["lr"] > 0  # a warm-up step, then the schedule
    raw = (out / "metrics.jsonl").read_text().splitlines()
    assert sum('"event": "resume"' in line for line in raw) == 1  # the second attempt redid steps 3 and 4
    # its first row names the checkpoint it started from; no other row claims a restart
    assert [(r["phase"], r["step"], r["resumed_from"]) for r in rows if "resumed_from" in r] == [("grpo", 3, 2)]
    versions = [r["version"] for r in grpo]
    assert versions == sorted(versions) and len(set(versions)) == 4  # one publish per step, none reused
    assert result["pool"].version == versions[-1]  # the rollouts hold the learner's last publish
    # the resumed attempt loaded the step-2 optimizer state: the final checkpoint has taken 4 steps
    final = torch.load(storage / "step-4" / "optimizer.pt", map_location="cpu")
    assert {int(s["step"]) for s in final["state"].values()} == {4}
    tensors = load_file(str(out / "adapters" / "grpo" / "adapter_model.safetensors"))
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())  # LoRA in fp32, whatever the base


def sft_rank(rank: int, world: int, port: int, model_dir: str, out: str, device: str = "cpu", dtype: str = "float32"):
    """``torch.multiprocessing.spawn`` target: rank ``rank`` of the learner's worker function (polyray.learner.loop.
    run_worker) for a 3-step SFT phase on ``world`` ranks (gloo, or NCCL with ``device`` "cuda", a GPU a rank);
    each rank saves the LoRA weights it ends with to ``out/rank-<rank>.pt``."""
    import torch.distributed as dist

    from polyray.config import RunConfig
    from polyray.learner.job import LearnerJob
    from polyray.learner.loop import run_rank

    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    run = RunConfig(
        model={"dtype": dtype},
        task=TASK.model_dump(),
        learner={
            "num_workers": world,
            "use_gpu": device.startswith("cuda"),
            "micro_batch_tokens": 32,
            "sync_check_every": 0,
            "lora": {"r": 4, "alpha": 8},
        },
        phases=[{"type": "sft", "name": "sft", "steps": 3, "batch_size": 6, "checkpoint_every": 2}],
    )
    session = LocalSession(Path(out) / "checkpoints" / "sft", device, rank=rank, world=world, port=port)
    try:
        run_rank(LearnerJob.for_phase(run, 0, model_dir=model_dir, output_dir=out), session)
        weights = {n: p.detach().cpu() for n, p in session.model.module.named_parameters() if p.requires_grad}
        torch.save(weights, Path(out) / f"rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_sft_ranks(model_dir: Path, out: Path, world: int, device: str = "cpu", dtype: str = "float32") -> list[dict]:
    """:func:`sft_rank` on ``world`` spawned processes; each rank's final LoRA weights, by rank."""
    from polyray.http import free_port

    spawn_ranks(sft_rank, (world, free_port(), str(model_dir), str(out), device, dtype), world)
    return [torch.load(out / f"rank-{rank}.pt") for rank in range(world)]


def check_ranks_trained_one_model(out: Path, weights: list[dict]) -> None:
    """Every rank ends with the same LoRA weights, bit for bit (DDP averaged each step's gradients), and they
    are the adapter rank 0 saved; the phase logged its 3 steps once and stored its checkpoints once."""
    from safetensors.torch import load_file

    from polyray.io import read_log_jsonl

    first = weights[0]
    assert first and all(set(w) == set(first) for w in weights)
    for other in weights[1:]:
        for name, tensor in first.items():
            assert torch.equal(other[name], tensor), name
    saved = load_file(str(out / "adapters" / "sft" / "adapter_model.safetensors"))
    by_suffix = {k.replace("base_model.model.", "").replace(".weight", ""): v for k, v in saved.items()}
    for name, tensor in first.items():
        key = name.replace("base_model.model.", "").replace(".default.weight", "")
        assert torch.equal(by_suffix[key], tensor.float()), name
    assert [r["step"] for r in read_log_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert sorted(p.name for p in (out / "checkpoints" / "sft").iterdir()) == ["step-2", "step-3"]  # and the last
