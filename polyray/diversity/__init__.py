"""Diversity of a set of completions: one registry of pure ``list[str] -> float`` functions.

ALGORITHMS.md sections 1 and 3. Names (the config's diversity ``type``):

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
k-subset sets (:func:`compute_loo_diversity`) cost no extra encoder passes.
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
    DEFAULT_BATCH_SIZE,
    compute_cosine_similarity,
    compute_pairwise_cosine_distance,
    compute_semantic_diversity,
    compute_vendi_diversity,
    embed_texts,
    get_encoder,
    semantic_from_embeddings,
    vendi_from_embeddings,
)
from polyray.diversity.task import compute_countdown_expr_diversity, normalise_expression

DiversityFn = Callable[[list[str]], float]
EmbeddingDiversityFn = Callable[..., float]  # (n, d) embedding matrix -> float

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


def compute_diversity_batch(name: str, groups: list[list[str]], batch_size: int = DEFAULT_BATCH_SIZE) -> list[float]:
    """Diversity of each group; equal to ``[compute_diversity(name, g) for g in groups]``.

    For embedding-based names the distinct texts of *all* groups are embedded in one
    batched ``encode`` call and each group's value is computed from its rows.
    """
    fn = get_diversity_fn(name)
    from_embeddings = EMBEDDING_DIVERSITY_FUNCTIONS.get(name)
    if from_embeddings is None:
        return [fn(list(g)) for g in groups]
    unique = list(dict.fromkeys(t for g in groups for t in g))
    row = {t: i for i, t in enumerate(unique)}
    E = embed_texts(unique, batch_size)  # (U, d), computed once
    out = []
    for g in groups:
        if len(g) < 2:  # same small-set convention as the text form
            out.append(fn(list(g)))
        else:
            out.append(from_embeddings(E[[row[t] for t in g]]))
    return out


def compute_loo_diversity(
    name: str, groups: list[list[str]], batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[list[float], list[list[float]]]:
    """D(Y) and the leave-one-out values D(Y without i) of every group, in one batched pass.

    Returns ``(full, loo)`` with ``full[b] = D(groups[b])`` and
    ``loo[b][i] = D(groups[b] without its i-th text)``; feed them (as tensors (B,) and
    (B, n)) to :func:`polyray.objectives.polychromic.compute_loo_advantages`.
    """
    sets: list[list[str]] = []
    for g in groups:
        sets.append(list(g))
        sets.extend(list(g[:i]) + list(g[i + 1 :]) for i in range(len(g)))
    values = compute_diversity_batch(name, sets, batch_size)
    full, loo, pos = [], [], 0
    for g in groups:
        full.append(values[pos])
        loo.append(values[pos + 1 : pos + 1 + len(g)])
        pos += 1 + len(g)
    return full, loo


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
    "compute_loo_diversity",
    "compute_pairwise_cosine_distance",
    "compute_self_bleu_diversity",
    "compute_semantic_diversity",
    "compute_sentence_bleu",
    "compute_vendi_diversity",
    "embed_texts",
    "get_diversity_fn",
    "get_encoder",
    "normalise_expression",
    "semantic_from_embeddings",
    "vendi_from_embeddings",
]
