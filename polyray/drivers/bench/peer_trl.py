"""The TRL side of ``polyray bench peer``, in its own interpreter: ``python -m polyray.drivers.bench.peer_trl SPEC_JSON``.

``SFTTrainer`` from the base model, then ``GRPOTrainer`` from polyray's SFT adapter (also its KL
reference), with the settings :func:`polyray.drivers.bench.peer.peer_settings` maps from the same
polyray config, each step timed by a callback; writes ``trl.json`` (step seconds, tokens, adapters)
in ``spec["out"]``. A fresh interpreter so its imports and model load count in TRL's end-to-end time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from polyray.drivers.bench.peer import _phase, mean_reference_tokens, peer_settings

# every trainer's arguments: CPU, no checkpoints or reports, a log row per step
TRAINER_ARGS = dict(
    use_cpu=True,
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    disable_tqdm=True,
    gradient_accumulation_steps=1,
    dataloader_num_workers=0,
)


def _step_timer():
    """A ``TrainerCallback`` recording each step's seconds and each logged row with a loss."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.logs = [], []

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self._t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.logs.append(dict(logs))

    return StepTimer()


def _sft(base, tokenizer, train, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """TRL's SFT of a LoRA on ``base``: step seconds, reference tokens per step, the saved adapter."""
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from trl import SFTConfig, SFTTrainer

    s, timer = settings["sft"], _step_timer()
    sft = SFTTrainer(
        model=base,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": p.text, "completion": p.reference} for p in train]),
        args=SFTConfig(
            output_dir=str(out / "trl-sft-work"),
            completion_only_loss=True,
            packing=False,
            **{k: v for k, v in s.items() if k != "name"},
            **TRAINER_ARGS,
        ),
        peft_config=PeftLoraConfig(task_type="CAUSAL_LM", bias="none", **settings["lora"]),
        callbacks=[timer],
    )
    sft.train()
    sft.model.save_pretrained(str(out / "trl-sft"), selected_adapters=["default"])
    ref_tokens = mean_reference_tokens(tokenizer, train)
    return {
        "step_s": timer.seconds,
        "tokens": [ref_tokens * s["per_device_train_batch_size"]] * len(timer.seconds),
        "adapter": str(out / "trl-sft"),
    }


def _grpo(run, task, policy, tokenizer, train, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """TRL's GRPO of ``policy`` (polyray's SFT adapter, trainable) scored by polyray's reward function."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from polyray.config import phase_reward
    from polyray.reward.service import build_reward_fn

    g = settings["grpo"]
    by_text = {p.text: p for p in train}
    scores = build_reward_fn(phase_reward(run, _phase(run, "grpo")[1]).model_copy(update={"endpoint": False}), task)

    # polyray's reward function, one completion per row
    def countdown_reward(prompts, completions, **kw):
        return [float(r) for r in scores([by_text[p] for p in prompts], [[c] for c in completions])[:, 0]]

    timer = _step_timer()
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=countdown_reward,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": p.text} for p in train]),
        args=GRPOConfig(
            output_dir=str(out / "trl-grpo-work"),
            log_completions=False,
            **{k: v for k, v in g.items() if k != "name"},
            **TRAINER_ARGS,
        ),
        callbacks=[timer],
    )
    trainer.train()
    trainer.model.save_pretrained(str(out / "trl-grpo"), selected_adapters=["default"])
    batch = g["per_device_train_batch_size"]
    return {
        "step_s": timer.seconds,
        "tokens": [r["completions/mean_length"] * batch for r in timer.logs],
        "reward_mean": [r.get("reward") for r in timer.logs],
        "adapter": str(out / "trl-grpo"),
    }


def main(spec: dict[str, Any]) -> None:
    """The TRL run: writes ``trl.json`` in ``spec["out"]``."""
    started = time.perf_counter()
    import torch

    torch.set_num_threads(spec["threads"])
    import trl
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polyray.config import load_config
    from polyray.models.source import format_for_model, prepare_model_dir
    from polyray.tasks import build_task

    run = load_config(spec["config"], spec["overrides"])
    settings, out = peer_settings(run), Path(spec["out"])
    model_dir = str(prepare_model_dir(run.model, run.task))
    task = format_for_model(build_task(run.task), run.model, model_dir)
    train = task.prompts("train", run.task.n_train)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = getattr(torch, settings["dtype"])
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    result: dict[str, Any] = {"trl_version": trl.__version__, "load_s": time.perf_counter() - started}
    result["sft"] = _sft(base, tokenizer, train=train, settings=settings, out=out)
    del base
    # start = KL reference
    policy = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype), spec["sft_adapter"], is_trainable=True
    )
    result["grpo"] = _grpo(run, task, policy, tokenizer, train=train, settings=settings, out=out)
    (out / "trl.json").write_text(json.dumps(result))


if __name__ == "__main__":
    from polyray.lifetime import exit_process

    main(json.loads(sys.argv[1]))
    exit_process(0)  # torch, TRL and triton loaded: no native teardown (polyray.lifetime)
