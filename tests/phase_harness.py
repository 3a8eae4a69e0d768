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
from pathlib import Path
from typing import Any

import torch

from polyray.config import GRPOPhaseConfig, LoraConfig, PolychromicSFTPhaseConfig, SFTPhaseConfig, TinyModelConfig
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
    model, tokenizer = build_peft_model(str(model_dir), LoraConfig(r=4, alpha=8), gradient_checkpointing=gradient_checkpointing)
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

    def submit(self, prompts: list[str], n: int, sampling, version=None, adapter_name=None, seeds=None):
        return _Done(self.generate(prompts, n, sampling, version))

    def generate(self, prompts: list[str], n: int, sampling, version=None, adapter_name=None, seeds=None):
        vocab = len(self.tokenizer)
        groups = []
        for i, text in enumerate(prompts):
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            group = []
            for j in range(n):
                rng = random.Random(f"{text}:{j}")
                length = rng.randint(1, self.max_tokens)  # unequal lengths exercise padding and the aggregations
                ids = [rng.randrange(vocab) for _ in range(length)]
                text_out = self.tokenizer.decode(ids)
                group.append(Sample(i, text_out, prompt_ids, ids, [self.logprob] * length, version or 0, True))
            groups.append(group)
        return groups


class GeneratePool:
    """Samples from transformers' ``generate`` on the policy itself, with processed log-probs."""

    def __init__(self, model, tokenizer, version: int = 1):
        self.model, self.tokenizer, self.version = model, tokenizer, version

    def submit(self, prompts: list[str], n: int, sampling, version=None, adapter_name=None, seeds=None):
        return _Done(self.generate(prompts, n, sampling, version))

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling, version=None, adapter_name=None, seeds=None):
        model = getattr(self.model, "module", self.model)
        device = next(model.parameters()).device
        groups = []
        for i, text in enumerate(prompts):
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out = model.generate(
                input_ids=torch.tensor([prompt_ids] * n, device=device),
                attention_mask=torch.ones(n, len(prompt_ids), dtype=torch.long, device=device),
                do_sample=True, temperature=sampling.temperature, top_p=1.0, top_k=0,
                max_new_tokens=sampling.max_tokens, return_dict_in_generate=True, output_scores=True,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )  # fmt: skip
            steps = torch.stack(out.scores, dim=1).float().log_softmax(-1)  # (n, L, V) processed log-probs
            group = []
            for j in range(n):
                ids = out.sequences[j, len(prompt_ids) :].tolist()
                if self.tokenizer.eos_token_id in ids:
                    ids = ids[: ids.index(self.tokenizer.eos_token_id) + 1]
                logprobs = [float(steps[j, t, tok]) for t, tok in enumerate(ids)]
                group.append(Sample(i, self.tokenizer.decode(ids), prompt_ids, ids, logprobs, version or 0, True))
            groups.append(group)
        return groups


def text_reward(prompts, texts) -> torch.Tensor:
    """A deterministic graded reward of the completion text: (B, G) float64."""
    return torch.tensor([[(len(t) % 4) / 3 for t in g] for g in texts], dtype=torch.float64)


def first_group_reward(prompts, texts) -> torch.Tensor:
    """Only the first group's rewards differ: dynamic sampling keeps one group, fewer sequences than 3 ranks."""
    return torch.tensor([[float(j % 2) if b == 0 else 1.0 for j in range(len(g))] for b, g in enumerate(texts)],
                        dtype=torch.float64)


REWARDS = {"grpo_dynamic_sampling": first_group_reward}


PHASE_CASES: dict[str, Any] = {
    "sft": SFTPhaseConfig(steps=1, batch_size=5),
    "polychromic_sft": PolychromicSFTPhaseConfig(
        steps=1, batch_size=5, prompts_per_step=3, n_samples=3, lam=0.5, diversity="countdown_expr"
    ),
    **{
        f"grpo_{mode}": GRPOPhaseConfig(
            steps=1, prompts_per_step=3, group_size=3, aggregation=mode, kl_beta=0.1, kl_reference="base",
            sampling={"max_tokens": 5},
        )
        for mode in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
    },
    "grpo_dynamic_sampling": GRPOPhaseConfig(
        steps=1, prompts_per_step=3, group_size=2, dynamic_sampling=True, sampling={"max_tokens": 5}
    ),
}


def make_phase(cfg, model, tokenizer, rank: int, world: int, pool, reference_adapter: str | None = None, reward_fn=None,
               micro_batch_tokens: int | None = None, logits_chunk_mib: float = 256):  # fmt: skip
    from polyray.learner.phases import PHASES, StepContext

    ctx = StepContext(model, tokenizer, rank, world, seed=0, reward_fn=reward_fn or text_reward,
                      reference_adapter=reference_adapter, micro_batch_tokens=micro_batch_tokens,
                      logits_chunk_mib=logits_chunk_mib)  # fmt: skip
    return PHASES[cfg.type](cfg, build_task(TASK), TASK.n_train, ctx, pool if rank == 0 else None)


def lora_grads(model) -> dict[str, torch.Tensor]:
    module = getattr(model, "module", model)
    return {n: p.grad.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def step_grads(
    model_dir: Path, name: str, rank: int = 0, world: int = 1, device: str = "cpu", wrap_ddp: bool = False,
    dtype: torch.dtype = torch.float32, **step_options,
):  # fmt: skip
    """(gradients of the LoRA parameters, metrics) after one ``phase.step`` of case ``name`` (the step runs
    its own backward passes). ``step_options``: ``micro_batch_tokens``, ``logits_chunk_mib``."""
    model, tokenizer = build_policy(model_dir, device)
    model = model.to(dtype)
    if wrap_ddp:  # as the learner wraps it (polyray.learner.loop._setup_model)
        model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    phase = make_phase(PHASE_CASES[name], model, tokenizer, rank, world, FixedPool(tokenizer),
                       reward_fn=REWARDS.get(name), **step_options)  # fmt: skip
    metrics = phase.step(0, 1)
    return lora_grads(model), metrics


def ddp_worker(rank: int, world: int, port: int, model_dir: str, names: list[str], out: str,
               options: dict | None = None) -> None:  # fmt: skip
    """``torch.multiprocessing.spawn`` target: every case's gradients on ``world`` gloo ranks; rank 0 saves them.
    ``options``: :func:`step_grads` keywords (``dtype``, ``micro_batch_tokens``, ``logits_chunk_mib``)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {name: step_grads(Path(model_dir), name, rank, world, wrap_ddp=True, **(options or {}))
                   for name in names}  # fmt: skip
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()
