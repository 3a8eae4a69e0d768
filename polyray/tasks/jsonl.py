"""Open-ended tasks from the user's data: ``replies`` (social-media replies, the seeds' first domain) and ``creative``.

Data: JSONL, parquet, CSV or Arrow rows of any of the shapes :mod:`polyray.tasks.data` reads
(conversational ``messages``, TRL's ``prompt``/``completion``, ``prompt``/``response``/``engagement``;
other keys are ignored, ``task.fields`` renames). Rows sharing a prompt (and system prompt) are
one evaluation prompt; its reference is the response with the highest engagement (the first one
when there is no engagement). A row that is not such an object raises :class:`JsonlDataError`
naming the file and the 1-based line number (row number for columnar files).

A system prompt (the row's, else ``task.system_prompt``) is kept: a plain-text model sees it
at the template's ``{system}`` or before the templated prompt; the prompt's ``meta["messages"]``
holds the conversation for chat-templated models.

Splits are per prompt, so a prompt never appears in two splits: when every prompt has
an engagement value they are stratified by engagement quantile (70/15/15 within each
bin, seeded; :func:`polyray.tasks.splits.stratified_split`, the engagement reward
model's splitter too, with a prompt's best engagement as its value), otherwise a seeded
70/15/15 shuffle. ``split: all`` uses every prompt (small files).

Quality of a completion (``quality``): ROUGE-1/2/L F against the reference, cosine
similarity of MiniLM embeddings (``embedding``), or the learned engagement model's
prediction (``engagement``; needs a model). Two engagement models, split by post: GRPO's
reward is trained on the train posts' rows only, and quality ``engagement`` is judged by a
second model trained on the val and test posts' rows (``eval_quality_model: held_out``), so
a policy is never judged by the model it was trained on. A completion counts as a success, for
pass@k, when its quality is >= ``success_threshold``; every computable metric is kept
in the judgement's ``metrics``. The model sees
``template.format(prompt=...)``; a few-shot prefix is ``text + reference + "\\n"`` per
example, so replies are expected on one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np

from polyray.config.tasks import JsonlTaskConfig, QualityMetric
from polyray.io import JsonlReport, cache_root
from polyray.tasks.base import Judgement, Prompt, Task
from polyray.storage import is_stored, local_path
from polyray.tasks.data import JsonlDataError, JsonlRow, data_fingerprint, local_data, read_rows
from polyray.tasks.quality import compute_embedding_cosines, compute_rouge
from polyray.tasks.splits import SplitError, rows_digest, shuffled_split, stratified_split

QUALITY_METRICS: tuple[str, ...] = get_args(QualityMetric)


def read_task_rows(
    path: str | Path,
    skip_bad_lines: bool = False,
    report: JsonlReport | None = None,
    fmt: str = "auto",
    fields: dict[str, str] | None = None,
) -> list[JsonlRow]:
    """Every row of the data (JSONL, parquet, CSV, Arrow: :func:`polyray.tasks.data.read_rows`); the first
    bad row raises naming file:line and what is expected (or, with ``skip_bad_lines``, is skipped and
    counted in ``report``)."""
    return read_rows(path, fmt, fields, skip_bad_lines, report)


def group_rows(rows: Sequence[JsonlRow]) -> list[dict[str, Any]]:
    """One record per distinct prompt (file order): responses, best engagement, reference, every row's line."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        g = groups.setdefault(
            r.key,
            {
                "prompt": r.prompt,
                "line": r.line,
                "responses": [],
                "engagements": [],
                "system": r.system,
                "turns": r.turns,
                "lines": [],
            },
        )
        g["lines"].append(r.line)
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
        raise JsonlDataError(
            f"{source}: {n} distinct prompts are too few for train/val/test splits (a run needs at least 10); add"
            " prompts, or evaluate the file alone with polyray eval, whose task entries take split: all"
        )
    if all(v is not None for v in values):
        try:
            return stratified_split(values, seed)
        except SplitError as exc:
            raise JsonlDataError(
                f"{source}: {exc}; add prompts, or evaluate the file alone with polyray eval, whose task entries"
                " take split: all"
            ) from None
    return shuffled_split(n, seed)


ENGAGEMENT_POSTS: dict[str, tuple[str, ...]] = {"train": ("train",), "held_out": ("val", "test")}
"""An engagement model's role -> the splits whose posts' rows train it: the reward's (``train``) and the
evaluations' judge (``held_out``), disjoint, so GRPO is never judged by the model it was rewarded by."""

# qualities the reference_similarity reward scores
SIMILARITY_METRICS = ("rouge1", "rouge2", "rougeL", "embedding")


class JsonlTask(Task):
    """A task over a JSONL file; ``reward_model`` (an engagement model, optional) scores (prompt, completion)."""

    graded = True

    def __init__(self, config: JsonlTaskConfig, reward_model=None):
        self.config = config = local_data(config)
        self.name = config.type
        self.success_threshold = config.success_threshold
        self.quality_name = config.quality
        self.engagement_model = reward_model
        report = JsonlReport()
        rows = read_task_rows(config.path, config.skip_bad_lines, report, config.format, config.fields)
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
            meta = {"prompt_id": f"line{g['line']}", "raw_prompt": g["prompt"], "engagement": g["engagement"]}
            system = g["system"] or self.config.system_prompt
            if system is not None or len(g["turns"]) > 1:
                meta["system"] = system
                meta["messages"] = self._messages(g, system)
            out.append(Prompt(text=self._text(g), reference=g["reference"] or "", meta=meta))
        return out

    def _text(self, g: dict[str, Any]) -> str:
        """What a plain-text model sees: the template of the prompt, with the system prompt at ``{system}``
        or, when the template has no such field, before it (a blank line between). Without a system
        prompt this is ``template.format(prompt=...)``, as it always was."""
        system = g["system"] or self.config.system_prompt
        if "{system}" in self.config.template:
            return self.config.template.format(prompt=g["prompt"], system=system or "")
        text = self.config.template.format(prompt=g["prompt"])
        return f"{system}\n\n{text}" if system else text

    def _messages(self, g: dict[str, Any], system: str | None) -> list[dict[str, str]]:
        """The prompt as a conversation (system turn, earlier turns, the templated last user turn): what a
        chat-templated model should see, for renderers that take ``messages``
        (:func:`polyray.tasks.base.with_prompt_format`)."""
        turns = [{"role": r, "content": c} for r, c in (g["turns"] or (("user", g["prompt"]),))]
        template = self.config.template.replace("{system}", "")
        turns[-1] = {"role": "user", "content": template.format(prompt=turns[-1]["content"])}
        return ([{"role": "system", "content": system}] if system else []) + turns

    # ---- training ---------------------------------------------------------------------------
    @property
    def reward_name(self) -> str:
        """GRPO's default reward: the engagement model when the file has engagement values to train it on
        (or the task's quality is engagement), else the completion's similarity to the prompt's reference
        (``reference_similarity``, by the task's quality metric), so a plain prompt/response or chat file
        trains every phase."""
        if self.config.quality == "engagement" or any(g["engagement"] is not None for g in self.groups):
            return "engagement"
        return "reference_similarity"

    def engagement_lines(self, posts: str) -> list[int]:
        """Lines (1-based) of the rows whose post is one of ``posts`` (:data:`ENGAGEMENT_POSTS`): what an
        engagement model of that role is trained on. Split by post, the task's own split, so the reward
        model never sees a row of a val or test post and the held-out model none of a train post."""
        return sorted(
            line for split in ENGAGEMENT_POSTS[posts] for i in self._split(split) for line in self.groups[i]["lines"]
        )

    def _engagement_cache(self, posts: str) -> Path:
        """The cache entry of the ``posts`` engagement model: per file, seed, role and the exact rows that train it."""
        rows = rows_digest(self.engagement_lines(posts))[:12]
        name = f"{data_fingerprint(self.config.path)[:16]}-seed{self.config.seed}-{posts}-rows{rows}"
        return cache_root() / "engagement" / name

    def engagement_model_dir(self) -> Path:
        """Where the reward's engagement model is (or is trained to, from the train posts' rows): the
        config's ``engagement_model``, else a cache entry per file, seed and rows."""
        if self.config.engagement_model:
            # a reference: this node's copy
            return Path(local_path(self.config.engagement_model))
        return self._engagement_cache("train")

    def eval_engagement_model_dir(self) -> Path:
        """Where the engagement model that judges quality ``engagement`` is: the reward's with
        ``eval_quality_model: reward``, else the held-out one (``eval_engagement_model``, else a cache
        entry), trained on the val and test posts' rows."""
        if self.config.eval_quality_model == "reward":
            return self.engagement_model_dir()
        if self.config.eval_engagement_model:
            return Path(local_path(self.config.eval_engagement_model))
        return self._engagement_cache("held_out")

    def reward_defaults(self) -> dict[str, dict[str, Any]]:
        metric = self.config.quality if self.config.quality in SIMILARITY_METRICS else "rougeL"
        model = self.config.engagement_model
        # a reference into cluster.storage goes to the reward replica as it is: it copies it to its own node
        model_path = model if model and is_stored(model) else str(self.engagement_model_dir())
        return {"engagement": {"model_path": model_path}, "reference_similarity": {"metric": metric}}

    def pretrain_corpus(self, n_prompts: int, noise: float, seed: int) -> list[tuple[str, str]]:
        """Every response of the train prompts (good and bad alike), each after its prompt's template.

        ``n_prompts``, ``noise`` and ``seed`` do not apply: the file is the corpus."""
        pairs = []
        for i in self._split("train"):
            g = self.groups[i]
            pairs += [(self._text(g), r) for r in g["responses"]]
        if not pairs:
            raise JsonlDataError(
                f"{self.config.path}: no train prompt has a 'response' to pretrain the embedded model on"
            )
        return pairs

    def check_references(self) -> None:
        for i in self._split("train"):
            if self.groups[i]["reference"] is None:
                raise JsonlDataError(
                    f"{self.config.path}:{self.groups[i]['line']}: no 'response' for this train prompt"
                    " (SFT imitates each prompt's best response)"
                )

    def corpus_key(self) -> dict[str, Any]:
        key = {
            "type": self.name,
            "sha256": data_fingerprint(self.config.path),
            "seed": self.config.seed,
            "template": self.config.template,
        }
        # only when set, so the caches of existing runs keep their keys
        extra = {"format": self.config.format, "fields": self.config.fields, "system_prompt": self.config.system_prompt}
        return key | {k: v for k, v in extra.items() if v not in ("auto", {}, None)}

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
            out.append(
                [
                    Judgement(
                        float(scores[quality][i][j]),
                        f"{quality}={float(scores[quality][i][j]):.3f}",
                        {name: float(v[i][j]) for name, v in scores.items()},
                    )
                    for j in range(len(g))
                ]
            )
        if on_done:
            on_done(sum(len(g) for g in groups))
        return out

    def judge(self, prompt: Prompt, completion: str) -> Judgement:
        return self.judge_groups([prompt], [[completion]])[0][0]
