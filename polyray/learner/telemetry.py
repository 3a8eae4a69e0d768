"""Learner metrics exported through ``ray.util.metrics`` (:mod:`polyray.telemetry`): the Ray
dashboard's Metrics view (and any Prometheus/Grafana scraping the cluster) shows them live, tagged
by run and phase.

Rank 0 records one sample per optimizer step from the same dict that goes to metrics.jsonl;
keys a phase does not produce (e.g. ``reward_mean`` in SFT) are skipped.
"""

from __future__ import annotations

from typing import Any

# metric name -> (key in the step metrics, description)
GAUGES = {
    "polyray_loss": ("loss", "Training loss of the last step."),
    "polyray_lr": ("lr", "Learning rate the last step trained at (the phase's schedule)."),
    "polyray_grad_norm": ("grad_norm", "Gradient norm of the last step, before clipping to learner.grad_clip."),
    "polyray_reward_mean": ("reward_mean", "Mean reward of the last rollout batch."),
    "polyray_kl": ("kl", "Mean k3 KL to the adapter-disabled base."),
    "polyray_diversity_advantage": ("adv_abs_mean", "Mean |diversity marginal| of polychromic samples."),
    "polyray_engine_mismatch_kl": (
        "mismatch_k3",
        "k3 KL of the rollout engine's log-probs from the learner's (same version) on the sampled tokens.",
    ),
    "polyray_engine_mismatch_abs": ("mismatch_abs", "Mean |log-prob gap| of rollout engine and learner per token."),
    "polyray_engine_mismatch_seq_max": ("mismatch_seq_max", "The step's largest per-sequence k3 engine mismatch."),
    "polyray_engine_mismatch_out_frac": (
        "mismatch_out_frac",
        "Share of sampled tokens whose engine/learner ratio is outside [1/cap, cap] (what mis drops).",
    ),
    "polyray_is_weight_mean": ("is_weight_mean", "Mean importance weight of the engine-mismatch correction."),
    "polyray_policy_version": ("version", "Adapter version the learner holds."),
    "polyray_policy_lag": ("max_lag", "Largest adapter-version lag of the step's samples."),
    "polyray_rollout_tokens_per_s": ("rollout_tokens_per_s", "Completion tokens per second the step waited for."),
}
HISTOGRAMS = {
    "polyray_step_seconds": ("step_s", "Wall time of one optimizer step on rank 0.", [0.05, 0.1, 0.25, 0.5, 1, 2, 5]),
    "polyray_sync_seconds": (
        "sync_s",
        "The step's time on the adapter publish (synchronous: until every rollout worker loaded it; one step ahead: until the store handed out its id).",
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
    ),
}


class LearnerTelemetry:
    def __init__(self, run: str, phase: str):
        from polyray.telemetry import Metrics

        self.metrics = Metrics(
            {"run": run, "phase": phase},
            gauges={name: desc for name, (_, desc) in GAUGES.items()},
            histograms={name: (desc, bounds) for name, (_, desc, bounds) in HISTOGRAMS.items()},
        )

    def record(self, metrics: dict[str, Any]) -> None:
        for name, (key, _) in GAUGES.items():
            if key in metrics:
                self.metrics.set(name, metrics[key])
        for name, (key, _, _) in HISTOGRAMS.items():
            if key in metrics:
                self.metrics.observe(name, metrics[key])
