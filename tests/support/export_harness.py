"""A run directory as ``polyray run`` leaves it, with random LoRA adapters, and what a model does on prompts:
what the ``polyray export`` tests compare."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from polyray.io import dump_config

PROMPTS = ["nums 3 4 9 target 12\nexpr:", "nums 2 7 5 target 9\nexpr:", "nums 8 1 6 target 48\nexpr:"]


def make_run(root: Path, run_config, model_dir: Path, phases=("sft", "grpo"), seed: int = 0) -> Path:
    """A run directory with one random, non-zero LoRA adapter per phase of ``phases``."""
    from polyray.learner.lora import build_peft_model, save_adapter

    run = root / "run"
    run.mkdir()
    (run / "config.resolved.yaml").write_text(dump_config(run_config))
    (run / "results.json").write_text(json.dumps({"name": "quickstart", "model_dir": str(model_dir), "phases": {}}))
    torch.manual_seed(seed)
    for version, phase in enumerate(phases, start=1):
        model, _ = build_peft_model(str(model_dir), run_config.learner.lora)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.3)
        save_adapter(model, run / "adapters" / phase, extra={"polyray_version.json": {"version": version}})
    return run


def greedy_and_logprobs(model, tokenizer, prompts, max_new_tokens=12):
    """Greedy continuations (token ids, up to EOS) and the log-prob of each prompt token after the first, under ``model``."""
    tokens, logprobs = [], []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        tokens.append(out[0, ids.shape[1] :].tolist())
        logprobs.append(logits.gather(-1, ids[0, 1:, None]).squeeze(-1))
    return tokens, logprobs
