"""Open-ended tasks from JSONL: ``replies`` (social-media replies, the seeds' first domain) and ``creative``.

Data: one JSON object per line, ``{"prompt": str, "response"?: str, "engagement"?: number}``
(other keys are ignored). Rows sharing a prompt are one evaluation prompt; its
reference is the response with the highest engagement (the first one when there is
no engagement). A line that is not such an object raises :class:`JsonlDataError`
naming the file and the 1-based line number.

Splits are per prompt, so a prompt never appears in two splits: when every prompt has
an engagement value they are stratified by engagement quantile (70/15/15 within each
bin, seeded; :func:`polyray.tasks.splits.stratified_split`, the engagement reward
model's splitter too, with a prompt's best engagement as its value), otherwise a seeded
70/15/15 shuffle. ``split: all`` uses every prompt (small files).

Quality of a completion (``quality``): ROUGE-1/2/L F against the reference, cosine
similarity of MiniLM embeddings (``embedding``), or the learned engagement model's
prediction (``engagement``; needs a model). A completion counts as a success, for
pass@k, when its quality is >= ``success_threshold``; every computable metric is kept
in the judgement's ``metrics``. The model sees
``template.format(prompt=...)``; a few-shot prefix is ``text + reference + "\\n"`` per
example, so replies are expected on one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from polyray.config.tasks import JsonlTaskConfig, QualityMetric
from polyray.io import DataError, JsonlReport, cache_root, file_sha256, read_jsonl_rows
from polyray.tasks.base import Judgement, Prompt, Task
from polyray.tasks.quality import compute_embedding_cosines, compute_rouge
from polyray.tasks.splits import SplitError, shuffled_split, stratified_split

QUALITY_METRICS: tuple[str, ...] = get_args(QualityMetric)


class JsonlDataError(DataError):
    """A JSONL file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class JsonlRow:
    prompt: str
    response: str | None
    engagement: float | None
    line: int


def read_task_rows(path: str | Path, skip_bad_lines: bool = False, report: JsonlReport | None = None) -> list[JsonlRow]:
    """Every non-blank line as a row; the first bad line raises naming file:line and field
    (or, with ``skip_bad_lines``, is skipped and counted in ``report``)."""
    return read_jsonl_rows(path, _parse_row, JsonlDataError, skip_bad_lines, report)


def _parse_row(obj: dict, where: str) -> JsonlRow:
    if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
        raise JsonlDataError(f"{where}: 'prompt' must be a non-empty string")
    response = obj.get("response")
    if response is not None and not isinstance(response, str):
        raise JsonlDataError(f"{where}: 'response' must be a string, got {type(response).__name__}")
    if response is not None and not response.strip():
        raise JsonlDataError(f"{where}: 'response' is empty (leave the key out for a prompt without a reference)")
    value = obj.get("engagement")
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    ):
        raise JsonlDataError(f"{where}: 'engagement' must be a finite number, got {value!r}")
    lineno = int(where.rsplit(":", 1)[1])
    return JsonlRow(obj["prompt"], response, None if value is None else float(value), lineno)


def group_rows(rows: Sequence[JsonlRow]) -> list[dict[str, Any]]:
    """One record per distinct prompt (file order): responses, best engagement, reference."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = groups.setdefault(r.prompt, {"prompt": r.prompt, "line": r.line, "responses": [], "engagements": []})
        if r.response is not None:
            g["responses"].append(r.response)
            g["engagements"].append(r.engagement)
    for g in groups.values():
        scored = [(e, i) for i, e in enumerate(g["engagements"]) if e is not None]
        best = max(scored, key=lambda t: (t[0], -t[1]))[1] if scored else (0 if g["responses"] else None)
        g["reference"] = g["responses"][best] if best is not None else None
        g["engagement"] = max(e for e, _ in scored) if scored else None
    return list(groups.values())


def split_prompts(groups: Sequence[dict[str, Any]], seed: int, source: str = "data") -> dict[str, list[int]]:
    """Indices of train/val/test prompts: engagement-stratified when every prompt has engagement."""
    values = [g["engagement"] for g in groups]
    n = len(groups)
    if n < 10:
        raise JsonlDataError(f"{source}: {n} distinct prompts are too few for train/val/test splits; use split: all")
    if all(v is not None for v in values):
        try:
            return stratified_split(values, seed)
        except SplitError as exc:
            raise JsonlDataError(f"{source}: {exc}; use split: all") from None
    return shuffled_split(n, seed)


class JsonlTask(Task):
    """A task over a JSONL file; ``reward_model`` (an engagement model, optional) scores (prompt, completion)."""

    graded = True

    def __init__(self, config: JsonlTaskConfig, reward_model=None):
        self.config = config
        self.name = config.type
        self.success_threshold = config.success_threshold
        self.quality_name = config.quality
        self.engagement_model = reward_model
        report = JsonlReport()
        rows = read_task_rows(config.path, config.skip_bad_lines, report)
        self.data_warning = report.summary(config.path) if report.skipped else None
        if config.quality not in ("engagement", "llm_judge") or (config.judge and config.judge.mode == "pairwise"):
            missing = next((r for r in rows if r.response is None), None)
            if missing is not None:
                raise JsonlDataError(
                    f"{config.path}:{missing.line}: no 'response', but quality {config.quality!r} needs a reference"
                )
        self.groups = group_rows(rows)
        self._splits: dict[str, list[int]] | None = None

    def _split(self, split: str) -> list[int]:
        if split == "all":
            return list(range(len(self.groups)))
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected train, val, test or all")
        if self._splits is None:
            self._splits = split_prompts(self.groups, self.config.seed, self.config.path)
        return self._splits[split]

    def prompts(self, split: str, count: int | None = None) -> list[Prompt]:
        """The first ``count`` prompts of ``split`` in file order (fewer when the split is smaller;
        None: the config's ``n_<split>``, else the whole split)."""
        if count is None:
            count = self.split_size(split)
        out = []
        for i in self._split(split)[:count]:
            g = self.groups[i]
            out.append(
                Prompt(
                    text=self.config.template.format(prompt=g["prompt"]),
                    reference=g["reference"] or "",
                    meta={"prompt_id": f"line{g['line']}", "raw_prompt": g["prompt"], "engagement": g["engagement"]},
                )
            )
        return out

    # ---- training ---------------------------------------------------------------------------
    reward_name = "engagement"

    def engagement_model_dir(self) -> Path:
        """Where this task's engagement model is (or is trained to): the config's, else a cache entry per file."""
        if self.config.engagement_model:
            return Path(self.config.engagement_model)
        return cache_root() / "engagement" / f"{file_sha256(self.config.path)[:16]}-seed{self.config.seed}"

    def reward_defaults(self) -> dict[str, dict[str, Any]]:
        return {"engagement": {"model_path": str(self.engagement_model_dir())}}

    def pretrain_corpus(self, n_prompts: int, noise: float, seed: int) -> list[tuple[str, str]]:
        """Every response of the train prompts (good and bad alike), each after its prompt's template.

        ``n_prompts``, ``noise`` and ``seed`` do not apply: the file is the corpus."""
        pairs = []
        for i in self._split("train"):
            g = self.groups[i]
            pairs += [(self.config.template.format(prompt=g["prompt"]), r) for r in g["responses"]]
        if not pairs:
            raise JsonlDataError(f"{self.config.path}: no train prompt has a 'response' to pretrain the embedded model on")
        return pairs

    def check_references(self) -> None:
        for i in self._split("train"):
            if self.groups[i]["reference"] is None:
                raise JsonlDataError(
                    f"{self.config.path}:{self.groups[i]['line']}: no 'response' for this train prompt"
                    " (SFT imitates each prompt's best response)"
                )

    def corpus_key(self) -> dict[str, Any]:
        return {"type": self.name, "sha256": file_sha256(self.config.path), "seed": self.config.seed,
                "template": self.config.template}

    # ---- judging ----------------------------------------------------------------------------
    def score_groups(
        self, prompts: Sequence[Prompt], groups: Sequence[Sequence[str]], metrics: Sequence[str] = QUALITY_METRICS
    ) -> dict[str, list[np.ndarray]]:
        """Per-completion ``metrics``, batched: rouge1/2/L and embedding vs the reference; engagement if a model is set.

        Returns {metric: P arrays (n_p,)}; reference metrics are absent when a prompt has no
        reference, engagement when there is no model.
        """
        sizes = [len(g) for g in groups]
        flat = [c for g in groups for c in g]
        raw = [p.meta["raw_prompt"] for p, g in zip(prompts, groups) for _ in g]
        refs = [p.reference for p, g in zip(prompts, groups) for _ in g]
        per: dict[str, np.ndarray] = {}
        if flat and all(refs):
            if {"rouge1", "rouge2", "rougeL"} & set(metrics):
                per.update(compute_rouge(flat, refs, aggregate=False))
            if "embedding" in metrics:
                per["embedding"] = compute_embedding_cosines(flat, refs)
        if flat and self.engagement_model is not None and "engagement" in metrics:
            per["engagement"] = np.asarray(self.engagement_model.predict(raw, flat), dtype=np.float64)
        if flat and self.config.judge is not None and "llm_judge" in metrics:
            per["llm_judge"] = self._judge_scores(raw, flat, refs)
        bounds = np.cumsum([0, *sizes])
        return {name: [v[a:b] for a, b in zip(bounds[:-1], bounds[1:])] for name, v in per.items()}

    def _judge_scores(self, prompts: list[str], completions: list[str], refs: list[str]) -> np.ndarray:
        """The judge's score of each completion (NaN where it never answered parseably: never a success)."""
        from polyray.judge import LLMJudge

        judge = LLMJudge(self.config.judge)
        if self.config.judge.mode == "pairwise":
            if not all(refs):
                raise JsonlDataError(f"{self.config.path}: judge mode 'pairwise' needs a 'response' on every prompt")
            verdicts = judge.pairwise(prompts, completions, refs)
        else:
            verdicts = judge.pointwise(prompts, completions)
        return np.asarray([np.nan if v.score is None else v.score for v in verdicts], dtype=np.float64)

    def judge_groups(
        self,
        prompts: Sequence[Prompt],
        groups: Sequence[Sequence[str]],
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[Judgement]]:
        """Batched: reward = the configured ``quality``; ``metrics`` holds every computable metric."""
        quality = self.config.quality
        if quality == "engagement" and self.engagement_model is None:
            raise ValueError("quality 'engagement' needs an engagement model (the eval job's reward_model)")
        scores = self.score_groups(prompts, groups)
        out = []
        for i, g in enumerate(groups):
            out.append([
                Judgement(float(scores[quality][i][j]), f"{quality}={float(scores[quality][i][j]):.3f}",
                          {name: float(v[i][j]) for name, v in scores.items()})
                for j in range(len(g))
            ])  # fmt: skip
        if on_done:
            on_done(sum(len(g) for g in groups))
        return out

    def judge(self, prompt: Prompt, completion: str) -> Judgement:
        return self.judge_groups([prompt], [[completion]])[0][0]
