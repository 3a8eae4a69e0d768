"""Diversity of a set of completions: one registry of pure ``list[str] -> float`` functions.

docs/algorithms.md §4. Names (a config's diversity fields accept exactly these:
:data:`polyray.config.names.DiversityName`, kept equal to this registry by tests/unit/config/test_registries.py):

| name             | value                                                      | range   |
|------------------|------------------------------------------------------------|---------|
| ``semantic``     | mean pairwise 1 − cosine of all-MiniLM-L6-v2 embeddings    | [0, 2]  |
| ``vendi``        | exp(entropy of eig(K/n)), K = cosine similarity (arXiv 2210.02410) | [1, n] |
| ``distinct_1``   | unique unigrams / total unigrams over the set              | [0, 1]  |
| ``distinct_2``   | unique bigrams / total bigrams over the set                | [0, 1]  |
| ``self_bleu``    | 1 − mean BLEU of each text against the others              | [0, 1]  |
| ``countdown_expr`` | distinct normalised Countdown expressions / n            | [1/n, 1] |

Sets of fewer than two texts score 0.0 (no diversity between samples), except
``vendi``, an effective number of items: 1.0 for one text, 0.0 for none.

Embedding-based names also have a ``*_from_embeddings`` form in
:data:`EMBEDDING_DIVERSITY_FUNCTIONS`; :func:`compute_diversity_batch` uses it to embed
every distinct text of all groups in one ``encode`` call, so leave-one-out and
k-subset sets cost no extra encoder passes. ``countdown_expr`` is the countdown task's
own diversity (:mod:`polyray.tasks.countdown`).
"""

from __future__ import annotations

from collections.abc import Callable

from polyray.diversity.lexical import (
    compute_distinct_1,
    compute_distinct_2,
    compute_distinct_n,
    compute_self_bleu_diversity,
    compute_sentence_bleu,
)
from polyray.diversity.semantic import (
    compute_cosine_similarity,
    compute_pairwise_cosine_distance,
    compute_semantic_diversity,
    compute_vendi_diversity,
    semantic_from_embeddings,
    vendi_from_embeddings,
)
from polyray.embeddings import DEFAULT_BATCH_SIZE, embed_texts, preload_encoder
from polyray.tasks.countdown import compute_countdown_expr_diversity

DiversityFn = Callable[[list[str]], float]
# (n, d) embedding matrix -> float
EmbeddingDiversityFn = Callable[..., float]

DIVERSITY_FUNCTIONS: dict[str, DiversityFn] = {
    "semantic": compute_semantic_diversity,
    "vendi": compute_vendi_diversity,
    "distinct_1": compute_distinct_1,
    "distinct_2": compute_distinct_2,
    "self_bleu": compute_self_bleu_diversity,
    "countdown_expr": compute_countdown_expr_diversity,
}

# Names whose value depends on the texts only through their embeddings.
EMBEDDING_DIVERSITY_FUNCTIONS: dict[str, EmbeddingDiversityFn] = {
    "semantic": semantic_from_embeddings,
    "vendi": vendi_from_embeddings,
}


def get_diversity_fn(name: str) -> DiversityFn:
    try:
        return DIVERSITY_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown diversity {name!r}; expected one of {sorted(DIVERSITY_FUNCTIONS)}") from None


def compute_diversity(name: str, texts: list[str]) -> float:
    """Diversity ``name`` of one set of completions."""
    return get_diversity_fn(name)(list(texts))


def compute_diversity_batch(
    name: str, groups: list[list[str]], batch_size: int = DEFAULT_BATCH_SIZE, embedding_dtype: str = "float32"
) -> list[float]:
    """Diversity of each group; equal to ``[compute_diversity(name, g) for g in groups]``.

    For embedding-based names the distinct texts of *all* groups are embedded in one
    batched ``encode`` call (the encoder's weights in ``embedding_dtype``) and each group's
    value is computed from its rows.
    """
    fn = get_diversity_fn(name)
    from_embeddings = EMBEDDING_DIVERSITY_FUNCTIONS.get(name)
    if from_embeddings is None:
        return [fn(list(g)) for g in groups]
    unique = list(dict.fromkeys(t for g in groups for t in g))
    row = {t: i for i, t in enumerate(unique)}
    # (U, d), computed once
    E = embed_texts(unique, batch_size=batch_size, dtype=embedding_dtype)
    out = []
    for g in groups:
        # same small-set convention as the text form
        if len(g) < 2:
            out.append(fn(list(g)))
        else:
            out.append(from_embeddings(E[[row[t] for t in g]]))
    return out


def preload_encoders(names: list[str]) -> bool:
    """Start loading the sentence encoder in the background when any of the diversities ``names`` embeds
    (:func:`polyray.embeddings.preload_encoder`, the weights :func:`compute_diversity_batch` uses by
    default); whether one started."""
    if not any(name in EMBEDDING_DIVERSITY_FUNCTIONS for name in names):
        return False
    preload_encoder()
    return True


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DIVERSITY_FUNCTIONS",
    "EMBEDDING_DIVERSITY_FUNCTIONS",
    "DiversityFn",
    "compute_cosine_similarity",
    "compute_countdown_expr_diversity",
    "compute_distinct_1",
    "compute_distinct_2",
    "compute_distinct_n",
    "compute_diversity",
    "compute_diversity_batch",
    "compute_pairwise_cosine_distance",
    "compute_self_bleu_diversity",
    "compute_semantic_diversity",
    "compute_sentence_bleu",
    "compute_vendi_diversity",
    "get_diversity_fn",
    "preload_encoders",
    "semantic_from_embeddings",
    "vendi_from_embeddings",
]
