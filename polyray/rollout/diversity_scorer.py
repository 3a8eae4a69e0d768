"""The diversity scorer: polychromic SFT's sample scoring in a Ray actor of its own, beside the update."""

from __future__ import annotations

import torch

from polyray.config import PolychromicSFTPhaseConfig
from polyray.objectives.polychromic import compute_diversity_advantages


class DiversityScorer:
    """:func:`compute_diversity_advantages` in a process of its own, a Ray actor rank 0 starts for a
    phase that samples one step ahead with an embedding diversity: the embedding model then runs
    beside the update instead of in rank 0's process, where its Python would hold the interpreter
    lock the update's own Python needs (docs/benchmarks.md, "Polychromic SFT"). The same function
    on the same texts: the same advantages."""

    def __init__(self, threads: int, embedding_dtype: str = "float32"):
        from polyray.embeddings import BUNDLED_ENCODER, get_encoder

        torch.set_num_threads(threads)
        # loaded while the phase starts, not at its first step
        get_encoder(BUNDLED_ENCODER, embedding_dtype)

    def advantages(
        self, name: str, groups: list[list[str]], estimator: str, k: int, embedding_dtype: str = "float32"
    ) -> torch.Tensor:
        return compute_diversity_advantages(name, groups, estimator, k, embedding_dtype)


def embedding_dtype_of(cfg: PolychromicSFTPhaseConfig) -> str:
    """The encoder dtype rank 0 scores ``cfg``'s samples with (``auto`` resolved on this machine), logged
    once when the phase uses an embedding diversity."""
    from polyray.diversity import EMBEDDING_DIVERSITY_FUNCTIONS
    from polyray.embeddings import resolve_dtype

    dtype = resolve_dtype(cfg.embedding_dtype)
    if cfg.diversity in EMBEDDING_DIVERSITY_FUNCTIONS:
        how = " (embedding_dtype: auto)" if cfg.embedding_dtype == "auto" else ""
        print(f"{cfg.name}: the {cfg.diversity} diversity's sentence encoder runs in {dtype}{how}")
    return dtype


def start_diversity_scorer(cfg: PolychromicSFTPhaseConfig, threads: int, embedding_dtype: str | None = None):
    """Rank 0's :class:`DiversityScorer` actor when ``cfg`` samples one step ahead with an embedding
    diversity (its model is the costly part); None otherwise, or without Ray: scored in-process.
    ``embedding_dtype``: its encoder's (default: :func:`embedding_dtype_of`). Imports Ray only when
    it would start one, so the phase runs where Ray is not installed (a bare CUDA machine)."""
    from polyray.diversity import EMBEDDING_DIVERSITY_FUNCTIONS

    if not (cfg.async_rollouts and cfg.diversity in EMBEDDING_DIVERSITY_FUNCTIONS):
        return None
    import ray

    if not ray.is_initialized():
        return None
    from polyray.cluster import on_this_node

    # on rank 0's node, outside the learner's placement group (like the adapter store); scoring is
    # idempotent, so a scorer that dies is restarted and its call retried
    options = dict(num_cpus=0, scheduling_strategy=on_this_node(), max_restarts=3, max_task_retries=3)
    return ray.remote(DiversityScorer).options(**options).remote(threads, embedding_dtype or embedding_dtype_of(cfg))
