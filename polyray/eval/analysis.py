"""Analyses behind the report (docs/algorithms.md §6).

- ``pareto_frontier``: non-dominated models in the (quality, diversity) plane, both maximised.
- ``load_dynamics`` / ``dynamics_trajectories``: the diversity-dynamics log
  (``dynamics.jsonl``: one JSON dict per evaluation every K steps, through SFT and GRPO)
  and its per-(run, metric) trajectories on one step axis.
- ``distance_above_curve``: how far a model's (pass@1, pass@K) lies above a trade-off curve (e.g. the
  SFT ↔ GRPO interpolation), in pass@K at the model's pass@1.
- ``prompt_success``: where two models' pass@k differs, prompt by prompt: each model's histogram of
  per-prompt success c/n, the prompts one solves (c >= 1) and the other never does (c = 0), and the
  share of the pass@k difference those prompts carry.
- ``lora_parameter_analysis`` / ``lora_difference`` / ``lora_heatmap_matrix``: per layer
  and module of a peft LoRA adapter, ΔW = scale · B @ A with scale = alpha / r
  (alpha / sqrt(r) with rsLoRA), its Frobenius norm, effective rank
  (Roy & Vetterli 2007: exp of the entropy of the normalised singular values) and top
  singular values. The SVD is done on the r × r core of the factorisation (QR of B and
  Aᵀ), so a 4096 × 11008 module costs no more than an r × r one; it is exact.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyray.io import read_log_jsonl

__all__ = [
    "DYNAMICS_RESERVED_KEYS",
    "compute_effective_rank",
    "compute_singular_values_of_product",
    "distance_above_curve",
    "dynamics_trajectories",
    "load_dynamics",
    "lora_difference",
    "lora_heatmap_matrix",
    "lora_parameter_analysis",
    "pareto_frontier",
    "prompt_success",
]

# c/n histogram edges; c = 0 is a bin of its own
SUCCESS_BINS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)


# --------------------------------------------------------------------------- Pareto


def pareto_frontier(points: Sequence[tuple[str, float, float]]) -> np.ndarray:
    """Mask of the non-dominated points, maximising both quality and diversity.

    Point i is dominated when some j has quality_j ≥ quality_i and diversity_j ≥
    diversity_i with at least one strict inequality; exact duplicates do not dominate
    each other (both stay on the frontier).

    Args:
        points: P tuples (name, quality, diversity) — e.g. (model, pass@1, semantic).
    Returns:
        (P,) bool array, True on the frontier.
    """
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    try:
        xy = np.array([(float(p[1]), float(p[2])) for p in points], dtype=np.float64)
    except (TypeError, ValueError, IndexError) as e:
        raise ValueError(f"points must be (name, quality, diversity) tuples: {e}") from e
    bad = np.flatnonzero(~np.all(np.isfinite(xy), axis=1))
    if bad.size:
        raise ValueError(f"points[{int(bad[0])}] = {points[int(bad[0])]!r} has a non-finite value")
    # ge[j, i]: j weakly better than i
    ge = np.all(xy[:, None, :] >= xy[None, :, :], axis=2)
    gt = np.any(xy[:, None, :] > xy[None, :, :], axis=2)
    dominated = np.any(ge & gt, axis=0)
    return ~dominated


# --------------------------------------------------------------------------- dynamics

DYNAMICS_RESERVED_KEYS = frozenset(
    {"run", "phase", "step", "global_step", "version", "policy_version", "time", "timestamp", "epoch"}
)
"""Keys of a dynamics record that are not metrics."""


def load_dynamics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``dynamics.jsonl`` file into a list of records (errors name ``path:line``).

    Each non-blank line is a JSON object with at least ``phase`` (e.g. "sft", "grpo")
    and ``step``, plus metric keys such as ``diversity/semantic`` or ``pass@1``; a run
    label ``run`` is optional. Missing keys are tolerated: ``phase`` defaults to
    "unknown", ``step`` to the record's position within its phase, ``run`` to the file
    stem; metrics may differ between lines.

    Raises:
        ValueError: naming the 1-based line number of a line that is not a JSON object.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    # a torn last line and rows superseded by a resume are left out
    for rec in read_log_jsonl(path):
        phase = str(rec.get("phase", "unknown"))
        rec["phase"] = phase
        if rec.get("step") is None:
            rec["step"] = seen.get(phase, 0)
        elif not isinstance(rec["step"], (int, float)):
            raise ValueError(f"{path}: non-numeric step {rec['step']!r} in phase {phase!r}")
        seen[phase] = seen.get(phase, 0) + 1
        rec.setdefault("run", path.stem)
        records.append(rec)
    return records


def dynamics_trajectories(
    records: Iterable[dict[str, Any]], metrics: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Per (run, metric) trajectories on one step axis spanning all phases.

    The x axis is the record's ``global_step`` when it has one (the learner writes it);
    otherwise phases are laid end to end in order of first appearance (e.g. SFT then
    GRPO): ``x = step + offset(phase)``, offset = 1 + the largest step of the earlier
    phases, so a phase that restarts its step count at 0 follows the previous one.

    Args:
        records: dynamics records (``load_dynamics``).
        metrics: metric keys to extract; default every numeric non-reserved key.
    Returns:
        list of {"run", "metric", "x": [...], "step": [...], "phase": [...],
        "value": [...]}, sorted by x; records missing the metric or holding a
        non-finite value are skipped. Also the phase boundaries are available via
        the ``phase`` list.
    """
    recs = list(records)
    phase_order: list[str] = []
    phase_max: dict[str, float] = {}
    for r in recs:
        ph = str(r.get("phase", "unknown"))
        if ph not in phase_max:
            phase_order.append(ph)
            phase_max[ph] = -math.inf
        phase_max[ph] = max(phase_max[ph], float(r.get("step", 0)))
    offsets, acc = {}, 0.0
    for ph in phase_order:
        offsets[ph] = acc
        acc += phase_max[ph] + 1 if math.isfinite(phase_max[ph]) else 0
    if metrics is None:
        names: list[str] = []
        for r in recs:
            for key, v in r.items():
                if key not in DYNAMICS_RESERVED_KEYS and key not in names and _is_number(v):
                    names.append(key)
        metrics = names
    out: dict[tuple[str, str], dict[str, list]] = {}
    for r in recs:
        run, ph = str(r.get("run", "run")), str(r.get("phase", "unknown"))
        for m in metrics:
            v = r.get(m)
            if not _is_number(v) or not math.isfinite(float(v)):
                continue
            t = out.setdefault((run, m), {"x": [], "step": [], "phase": [], "value": []})
            gs = r.get("global_step")
            t["x"].append(float(gs) if _is_number(gs) else float(r.get("step", 0)) + offsets[ph])
            t["step"].append(r.get("step", 0))
            t["phase"].append(ph)
            t["value"].append(float(v))
    result = []
    for (run, m), t in out.items():
        order = np.argsort(t["x"], kind="stable")
        result.append({"run": run, "metric": m, **{k: [t[k][i] for i in order] for k in t}})
    return result


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- LoRA

_LORA_KEY = re.compile(r"^(?P<prefix>.+)\.lora_(?P<kind>A|B|embedding_A|embedding_B)(?:\.[^.]+)?(?:\.weight)?$")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(?P<idx>\d+)\.(?P<rest>.+)$")


def _load_adapter_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    st_path = adapter_dir / "adapter_model.safetensors"
    bin_path = adapter_dir / "adapter_model.bin"
    if st_path.exists():
        from safetensors.torch import load_file

        tensors = load_file(str(st_path))
    elif bin_path.exists():
        import torch

        tensors = torch.load(str(bin_path), map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"adapter_dir {adapter_dir} has neither adapter_model.safetensors nor adapter_model.bin")
    # via float32 torch: numpy has no bfloat16
    return {k: v.detach().float().numpy().astype(np.float64) for k, v in tensors.items()}


def _pattern_value(patterns: dict[str, Any], module_path: str, default: Any) -> Any:
    """peft's rank_pattern/alpha_pattern lookup: key matches the end of the module path."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module_path):
            return value
    return default


def compute_singular_values_of_product(B: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Singular values of B @ A for B (out, r), A (r, in), via QR of each factor; (r,) descending."""
    qb, rb = np.linalg.qr(B)
    qa, ra = np.linalg.qr(A.T)
    return np.linalg.svd(rb @ ra.T, compute_uv=False)


def compute_effective_rank(singular_values: np.ndarray) -> float:
    """exp(H(p)), p = σ / Σσ (Roy & Vetterli 2007); 0.0 for an all-zero matrix."""
    s = np.asarray(singular_values, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _lora_pairs(adapter_dir: Path, tensors: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Module prefix -> its {"A", "B"} LoRA factors (embedding factors included)."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, t in tensors.items():
        m = _LORA_KEY.match(key)
        if m:
            kind = m["kind"].replace("embedding_", "")
            pairs.setdefault(m["prefix"], {})[kind] = t
    if not pairs:
        raise ValueError(f"adapter_dir {adapter_dir}: no lora_A/lora_B tensors in the adapter weights")
    return pairs


def _module_row(
    adapter_dir: Path, cfg: dict[str, Any], prefix: str, ab: dict[str, np.ndarray], top_k: int
) -> dict[str, Any]:
    """One module's row of :func:`lora_parameter_analysis`."""
    if set(ab) != {"A", "B"}:
        raise ValueError(f"adapter_dir {adapter_dir}: {prefix} lacks its lora_{({'A', 'B'} - set(ab)).pop()}")
    A, B = ab["A"], ab["B"]
    # lora_embedding_A (r, vocab) / lora_embedding_B (dim, r) also multiply as B @ A (= ΔWᵀ, same spectrum)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(f"adapter_dir {adapter_dir}: {prefix} has incompatible shapes A {A.shape}, B {B.shape}")
    r = int(A.shape[0])
    lm = _LAYER.search(prefix)
    module_path = lm["rest"] if lm else prefix.split(".")[-1]
    alpha = float(_pattern_value(cfg.get("alpha_pattern"), prefix, cfg.get("lora_alpha", r)))
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    sv = scale * compute_singular_values_of_product(B, A)
    return {
        "key": prefix,
        "layer": int(lm["idx"]) if lm else None,
        "module": module_path.split(".")[-1],
        "module_path": module_path,
        "shape": [int(B.shape[0]), int(A.shape[1])],
        "rank": r,
        "alpha": alpha,
        "scale": scale,
        "frobenius_norm": float(np.sqrt(np.sum(sv**2))),
        "effective_rank": compute_effective_rank(sv),
        "top_singular_values": [float(v) for v in sv[:top_k]],
    }


def lora_parameter_analysis(adapter_dir: str | Path, top_k: int = 5) -> list[dict[str, Any]]:
    """Per-module statistics of a peft LoRA adapter directory.

    Reads ``adapter_config.json`` (``r``, ``lora_alpha``, ``use_rslora``,
    ``rank_pattern``, ``alpha_pattern``) and ``adapter_model.safetensors`` (or
    ``.bin``). For each lora_A/lora_B pair (keys like
    ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight``):
    ΔW = scale · B @ A, scale = alpha / r (alpha / sqrt(r) with rsLoRA), r = rows of A.

    Returns:
        rows sorted by (layer, module_path), each {"key", "layer" (int or None),
        "module" (last name, e.g. "q_proj"), "module_path" (e.g. "self_attn.q_proj"),
        "shape" [out, in], "rank", "alpha", "scale", "frobenius_norm",
        "effective_rank", "top_singular_values" (up to ``top_k``, descending)}.
    """
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.exists():
        raise ValueError(f"adapter_dir {adapter_dir} has no adapter_config.json")
    cfg = json.loads(cfg_path.read_text())
    tensors = _load_adapter_tensors(adapter_dir)

    rows = [
        _module_row(adapter_dir, cfg, prefix, ab, top_k) for prefix, ab in _lora_pairs(adapter_dir, tensors).items()
    ]
    rows.sort(key=lambda r: (-1 if r["layer"] is None else r["layer"], r["module_path"]))
    return rows


def lora_difference(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join two analyses on (layer, module_path); differences are b − a.

    Returns rows {"layer", "module", "module_path", "frobenius_norm_a",
    "frobenius_norm_b", "frobenius_norm_diff", "effective_rank_a", "effective_rank_b",
    "effective_rank_diff"}; a module present on one side only gets NaN for the other
    side and the differences.
    """
    index_a = {(r["layer"], r["module_path"]): r for r in rows_a}
    index_b = {(r["layer"], r["module_path"]): r for r in rows_b}
    keys = sorted(set(index_a) | set(index_b), key=lambda k: (-1 if k[0] is None else k[0], k[1]))
    out = []
    for key in keys:
        ra, rb = index_a.get(key), index_b.get(key)
        row: dict[str, Any] = {"layer": key[0], "module": key[1].split(".")[-1], "module_path": key[1]}
        for stat in ("frobenius_norm", "effective_rank"):
            va = float(ra[stat]) if ra else math.nan
            vb = float(rb[stat]) if rb else math.nan
            row[f"{stat}_a"], row[f"{stat}_b"], row[f"{stat}_diff"] = va, vb, vb - va
        out.append(row)
    return out


def lora_heatmap_matrix(
    rows: Sequence[dict[str, Any]], value: str = "frobenius_norm"
) -> tuple[list[int], list[str], np.ndarray]:
    """Arrange analysis rows as a (layers × modules) matrix of ``value`` (NaN where absent).

    Rows without a layer index (e.g. lm_head) are left out. Modules are keyed by
    ``module`` (short name), in order of first appearance.
    """
    layers = sorted({r["layer"] for r in rows if r.get("layer") is not None})
    modules: list[str] = []
    for r in rows:
        if r.get("layer") is not None and r["module"] not in modules:
            modules.append(r["module"])
    mat = np.full((len(layers), len(modules)), np.nan)
    li, mi = {v: i for i, v in enumerate(layers)}, {v: i for i, v in enumerate(modules)}
    for r in rows:
        if r.get("layer") is not None and r.get(value) is not None:
            mat[li[r["layer"]], mi[r["module"]]] = float(r[value])
    return layers, modules, mat


def _success_histogram(counts: Sequence[tuple[int, int]]) -> dict[str, int]:
    """Prompts per bin of c/n: "0" (never correct), then (lo, hi] for the edges of :data:`SUCCESS_BINS`."""
    out = {"0": sum(1 for _, c in counts if c == 0)}
    for lo, hi in zip(SUCCESS_BINS, SUCCESS_BINS[1:]):
        out[f"({lo:g}, {hi:g}]"] = sum(1 for n, c in counts if c > 0 and lo < c / n <= hi)
    return out


def prompt_success(a: Sequence[Any], b: Sequence[Any], k: int) -> dict[str, Any]:
    """Where model A's pass@k exceeds model B's, prompt by prompt (e.g. A = SFT, B = GRPO).

    ``a``, ``b``: per-prompt rows with ``prompt``, ``n``, ``c`` (:class:`~polyray.eval.record.PromptRow`),
    paired by prompt text. Returns each model's histogram of c/n, the prompts A solves (c >= 1) that B
    never does (c = 0) and the reverse, and the share of the summed per-prompt pass@k difference
    Σ_p (pass@k_A(p) − pass@k_B(p)) that the first set carries."""
    from polyray.eval.passk import compute_pass_at_k

    b_of = {row.prompt: row for row in b}
    if len(b_of) != len(b) or None in b_of:
        raise ValueError("prompt_success: B's rows need distinct prompt texts")
    pairs = [(row, b_of[row.prompt]) for row in a if row.prompt in b_of]
    if len(pairs) != len(a) or len(a) != len(b):
        raise ValueError(f"prompt_success: the models were evaluated on different prompts ({len(a)} vs {len(b)})")
    gap = [compute_pass_at_k(x.n, x.c, k) - compute_pass_at_k(y.n, y.c, k) for x, y in pairs]
    lost = [i for i, (x, y) in enumerate(pairs) if x.c >= 1 and y.c == 0]
    gained = [i for i, (x, y) in enumerate(pairs) if y.c >= 1 and x.c == 0]
    total = math.fsum(gap)
    return {
        "k": k,
        "prompts": len(pairs),
        "histogram_a": _success_histogram([(x.n, x.c) for x, _ in pairs]),
        "histogram_b": _success_histogram([(y.n, y.c) for _, y in pairs]),
        "solved_by_a_never_by_b": len(lost),
        "solved_by_b_never_by_a": len(gained),
        # mean over prompts: the models' pass@k difference
        f"pass@{k}_difference": total / len(pairs),
        f"pass@{k}_difference_on_those": math.fsum(gap[i] for i in lost) / len(pairs),
        "share_of_difference": math.fsum(gap[i] for i in lost) / total if total else None,
    }


def distance_above_curve(curve: Sequence[tuple[float, float]], x: float, y: float) -> float:
    """y − C(x): C is the piecewise-linear line through the ``curve``'s (x, y) points sorted by x, and
    outside their x range the nearest end point's y (no extrapolation of a slope)."""
    points = sorted(curve)
    if not points:
        raise ValueError("distance_above_curve: the curve has no points")
    xs = [p[0] for p in points]
    if x <= xs[0]:
        return y - points[0][1]
    if x >= xs[-1]:
        return y - points[-1][1]
    return y - float(np.interp(x, xs, [p[1] for p in points]))
