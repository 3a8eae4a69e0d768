"""Pareto frontier, dynamics loader and LoRA parameter analysis (against numpy on a tiny peft adapter)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from polyray.eval.analysis import (
    compute_effective_rank,
    dynamics_trajectories,
    load_dynamics,
    lora_difference,
    lora_heatmap_matrix,
    lora_parameter_analysis,
    pareto_frontier,
)


def test_pareto_on_hand_points():
    pts = [
        ("base", 0.30, 0.20),  # dominated by lora (better on both)
        ("lora", 0.50, 0.25),  # frontier: best quality
        ("poly", 0.45, 0.40),  # frontier: trades quality for diversity
        ("poly-0.5", 0.20, 0.55),  # frontier: most diverse
        ("dup-poly", 0.45, 0.40),  # exact duplicate of poly: both stay
        ("weak", 0.45, 0.30),  # dominated by poly (equal quality, less diverse)
    ]
    np.testing.assert_array_equal(pareto_frontier(pts), [False, True, True, True, True, False])
    assert pareto_frontier([]).shape == (0,)
    with pytest.raises(ValueError, match="points\\[1\\]"):
        pareto_frontier([("a", 0.1, 0.2), ("b", float("nan"), 0.1)])


def test_load_dynamics_and_trajectories(tmp_path):
    path = tmp_path / "dynamics.jsonl"
    lines = [
        {"phase": "sft", "step": 0, "diversity/semantic": 0.40, "pass@1": 0.1},
        {"phase": "sft", "step": 10, "diversity/semantic": 0.35},  # pass@1 missing: tolerated
        "",
        {"phase": "grpo", "step": 0, "diversity/semantic": 0.30, "pass@1": 0.3},
        {"phase": "grpo", "diversity/semantic": 0.25, "pass@1": 0.4},  # no step: position in phase
    ]
    path.write_text("\n".join(json.dumps(x) if x else "" for x in lines) + "\n")
    recs = load_dynamics(path)
    assert len(recs) == 4
    assert recs[3]["step"] == 1 and recs[0]["run"] == "dynamics"
    traj = {t["metric"]: t for t in dynamics_trajectories(recs)}
    assert set(traj) == {"diversity/semantic", "pass@1"}
    # grpo follows sft on one axis: offset = 10 + 1
    assert traj["diversity/semantic"]["x"] == [0.0, 10.0, 11.0, 12.0]
    assert traj["diversity/semantic"]["phase"] == ["sft", "sft", "grpo", "grpo"]
    assert traj["pass@1"]["value"] == [0.1, 0.3, 0.4]


def test_trajectories_use_global_step_when_present():
    recs = [
        {"run": "r", "phase": "sft", "step": 5, "global_step": 5, "version": 1, "diversity/semantic": 0.4},
        {"run": "r", "phase": "grpo", "step": 0, "global_step": 20, "version": 2, "diversity/semantic": 0.3},
    ]
    (t,) = dynamics_trajectories(recs)  # version/global_step are not metrics
    assert t["metric"] == "diversity/semantic" and t["x"] == [5.0, 20.0] and t["step"] == [5, 0]


@pytest.mark.parametrize(
    "bad, match",
    [("{not json", r"d\.jsonl:2: not valid JSON"), ("[1, 2]", r"d\.jsonl:2: expected a JSON object, got list")],
)
def test_load_dynamics_bad_line(tmp_path, bad, match):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"phase": "sft", "step": 0}) + "\n" + bad + "\n")
    with pytest.raises(ValueError, match=match):
        load_dynamics(path)


def test_effective_rank_values():
    assert compute_effective_rank(np.array([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert compute_effective_rank(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert compute_effective_rank(np.zeros(3)) == 0.0


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A peft adapter on a 2-layer Qwen3 (hidden 64): random B, and layer 1 q_proj made rank 1."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=64,
    )
    model = get_peft_model(
        Qwen3ForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)  # peft initialises B = 0 (ΔW = 0)
        q1 = model.base_model.model.model.layers[1].self_attn.q_proj
        a = torch.randn(64)
        q1.lora_A["default"].weight.copy_(torch.outer(torch.tensor([1.0, -2.0, 0.5, 3.0]), a))  # rank-1 A
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_lora_analysis_matches_numpy(tiny_adapter):
    from safetensors.numpy import load_file

    rows = lora_parameter_analysis(tiny_adapter)
    assert len(rows) == 2 * 3
    tensors = load_file(str(tiny_adapter / "adapter_model.safetensors"))
    scale = 8 / 4
    for row in rows:
        A = tensors[row["key"] + ".lora_A.weight"].astype(np.float64)
        B = tensors[row["key"] + ".lora_B.weight"].astype(np.float64)
        dw = scale * B @ A
        sv = np.linalg.svd(dw, compute_uv=False)
        assert row["scale"] == pytest.approx(scale) and row["rank"] == 4
        assert row["shape"] == list(dw.shape)
        assert row["frobenius_norm"] == pytest.approx(np.linalg.norm(dw, "fro"), rel=1e-9)
        np.testing.assert_allclose(row["top_singular_values"], sv[:5][:4], rtol=1e-8, atol=1e-10)
        p = sv[sv > 1e-12 * sv.max()] / sv.sum()
        assert row["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    by = {(r["layer"], r["module"]): r for r in rows}
    assert by[(1, "q_proj")]["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert by[(0, "q_proj")]["effective_rank"] > 2.0
    assert by[(0, "down_proj")]["module_path"] == "mlp.down_proj"
    assert rows[0]["key"].startswith("base_model.model.model.layers.0.")


def test_lora_difference_and_heatmap(tiny_adapter):
    rows = lora_parameter_analysis(tiny_adapter)
    diff = lora_difference(rows, rows)
    assert all(d["frobenius_norm_diff"] == 0.0 for d in diff)
    half = [dict(r, frobenius_norm=r["frobenius_norm"] / 2) for r in rows[:-1]]
    diff = lora_difference(half, rows)
    assert diff[0]["frobenius_norm_diff"] == pytest.approx(rows[0]["frobenius_norm"] / 2)
    assert math.isnan(diff[-1]["frobenius_norm_a"])  # present in b only
    layers, modules, mat = lora_heatmap_matrix(rows)
    assert layers == [0, 1] and set(modules) == {"q_proj", "v_proj", "down_proj"}
    assert mat.shape == (2, 3) and np.all(np.isfinite(mat))


def test_lora_analysis_rejects_bad_dir(tmp_path):
    with pytest.raises(ValueError, match="adapter_config.json"):
        lora_parameter_analysis(tmp_path)


def test_prompt_success_counts_the_prompts_b_never_solves_and_their_share():
    from polyray.eval.analysis import prompt_success
    from polyray.eval.record import PromptRow

    # (prompt, n, c) for A and B over 5 prompts; B's rows in another order
    a = [PromptRow(10, c, prompt=p) for p, c in [("p1", 1), ("p2", 5), ("p3", 0), ("p4", 10), ("p5", 2)]]
    b = [PromptRow(10, c, prompt=p) for p, c in [("p5", 0), ("p4", 10), ("p3", 3), ("p2", 9), ("p1", 0)]]
    out = prompt_success(a, b, k=2)
    # pass@2 = 1 - C(n - c, 2) / C(n, 2) with n = 10, C(10, 2) = 45, by hand
    p2 = {0: 0.0, 1: 1 - 36 / 45, 2: 1 - 28 / 45, 3: 1 - 21 / 45, 5: 1 - 10 / 45, 9: 1.0, 10: 1.0}
    gaps = {"p1": p2[1], "p2": p2[5] - p2[9], "p3": -p2[3], "p4": 0.0, "p5": p2[2]}
    assert out["solved_by_a_never_by_b"] == 2 and out["solved_by_b_never_by_a"] == 1  # p1, p5; p3
    assert out["pass@2_difference"] == pytest.approx(sum(gaps.values()) / 5, abs=1e-12)
    assert out["pass@2_difference_on_those"] == pytest.approx((gaps["p1"] + gaps["p5"]) / 5, abs=1e-12)
    assert out["share_of_difference"] == pytest.approx((gaps["p1"] + gaps["p5"]) / sum(gaps.values()), abs=1e-12)
    assert out["histogram_a"] == {"0": 1, "(0, 0.05]": 0, "(0.05, 0.1]": 1, "(0.1, 0.25]": 1, "(0.25, 0.5]": 1,
                                  "(0.5, 1]": 1}  # fmt: skip
    assert out["histogram_b"]["0"] == 2 and sum(out["histogram_b"].values()) == 5
    with pytest.raises(ValueError, match="different prompts"):
        prompt_success(a, b[:4], k=2)


def test_distance_above_a_curve_is_linear_between_its_points_and_flat_beyond():
    from polyray.eval.analysis import distance_above_curve

    curve = [(0.18, 0.48), (0.13, 0.60), (0.16, 0.58)]  # unsorted on purpose
    # between (0.16, 0.58) and (0.18, 0.48): at 0.17 the line is at 0.53
    assert distance_above_curve(curve, 0.17, 0.56) == pytest.approx(0.03, abs=1e-12)
    assert distance_above_curve(curve, 0.145, 0.55) == pytest.approx(0.55 - 0.59, abs=1e-12)
    assert distance_above_curve(curve, 0.20, 0.50) == pytest.approx(0.02, abs=1e-12)  # beyond: the end's y
    assert distance_above_curve(curve, 0.10, 0.50) == pytest.approx(-0.10, abs=1e-12)
    with pytest.raises(ValueError):
        distance_above_curve([], 0.1, 0.1)
