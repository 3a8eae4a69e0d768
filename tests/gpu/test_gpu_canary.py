"""The sync canary's learner side on CUDA in bfloat16 (a bfloat16 base, float32 LoRA, as a run with
``model.dtype: bfloat16`` trains) against a float64 forward of the same weights on the CPU: the learner's
own rounding stays inside the canary's rule (polyray.learner.sync), and a worker serving the base model
instead would be caught. Qwen3-0.6B's shape with random weights (polyray bench canary's model). The
figures are printed (-s) for docs/benchmarks.md."""

from __future__ import annotations

import statistics

import pytest
import torch

pytestmark = [pytest.mark.gpu]


def canary_gaps(root, device: str, layers: int = 28, probes: int = 16, tokens: int = 32) -> dict:
    """Per probe: RMS of (bfloat16 learner on ``device`` − float64 reference), and the verdicts of the rule."""
    from polyray.config import LoraConfig
    from polyray.drivers.bench.canary import _load, _scale_final_norm
    from polyray.drivers.bench.learner import BenchShape, build_bench_model
    from polyray.learner.lora import build_peft_model, extract_adapter
    from polyray.learner.sync import NOISE, TOLERANCE, SyncCanary, rms, stale_reason

    model_dir = build_bench_model(root / "model", BenchShape(layers=layers))
    _scale_final_norm(model_dir, 6.0)
    lora = LoraConfig(r=32, alpha=64)
    learner, _ = build_peft_model(str(model_dir), lora, "bfloat16")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in learner.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 2e-3)
    reference, _ = build_peft_model(str(model_dir), lora, "float64")
    _load(reference, extract_adapter(learner))
    learner = learner.to(device)
    prompts = torch.randint(3, 151_000, (probes, 24), generator=gen)
    with torch.no_grad():  # completions the model finds likely, drawn at T = 1
        torch.manual_seed(0)
        drawn = learner.generate(input_ids=prompts.to(device), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)  # fmt: skip
    gaps, verdicts, base_caught = [], [], 0
    for prompt, full in zip(prompts.tolist(), drawn.cpu().tolist()):
        probe = (prompt, full[len(prompt) :])
        canary = SyncCanary(1, probe, 0, "bfloat16")
        exact = canary.learner_logprobs(reference, *probe, 1.0)
        ours = canary.learner_logprobs(learner, *probe, 1.0)
        base = canary.learner_logprobs(learner, *probe, 1.0, adapter=False)
        gaps.append(rms(ours - exact))
        verdicts.append(stale_reason(exact, ours, {"the base model": base}, TOLERANCE["bfloat16"], NOISE["bfloat16"]))
        base_caught += (
            stale_reason(ours, base, {"the base model": base}, TOLERANCE["bfloat16"], NOISE["bfloat16"]) is not None
        )
    return {"gaps": gaps, "verdicts": verdicts, "base_caught": base_caught, "probes": probes}


def test_bfloat16_learner_log_probs_on_cuda_are_within_the_canarys_rule(tmp_path):
    from polyray.learner.sync import NOISE

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    result = canary_gaps(tmp_path, "cuda")
    gaps = result["gaps"]
    print(
        f"\nbfloat16 on {torch.cuda.get_device_name()} vs float64: RMS median {statistics.median(gaps):.4f},"
        f" max {max(gaps):.4f} over {len(gaps)} probes; base model caught {result['base_caught']}/{result['probes']}"
    )
    assert all(v is None for v in result["verdicts"]), [v for v in result["verdicts"] if v]
    assert statistics.median(gaps) < NOISE["bfloat16"]
    assert result["base_caught"] >= result["probes"] // 2  # the adapter moves the probe past the noise
