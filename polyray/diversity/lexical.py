"""Lexical diversity of a set of completions: distinct-n and self-BLEU.

docs/algorithms.md §4. Tokens are whitespace-separated words for distinct-n (no
normalisation: case and punctuation count, as in Li et al. 2016, arXiv 1510.03055);
self-BLEU (Zhu et al. 2018, Texygen, arXiv 1802.01886) uses sacrebleu's sentence BLEU
with its own ``13a`` tokeniser, exponential smoothing and effective order, so short
completions are not scored 0 merely for lacking 4-grams.

Every function maps ``list[str] -> float`` and returns 0.0 for sets of fewer than two
texts: one sample has no diversity *between* samples, and a fixed value keeps
leave-one-out marginals well defined for n = 2.
"""

from __future__ import annotations

from functools import lru_cache


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def compute_distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over the whole set (whitespace tokens).

    Texts shorter than ``n`` tokens (e.g. empty strings) contribute no n-grams; a set
    with no n-grams at all scores 0.0. In [0, 1].
    """
    if n < 1:
        raise ValueError(f"distinct-n needs n >= 1, got {n}")
    if len(texts) < 2:
        return 0.0
    grams = [g for text in texts for g in _ngrams(text.split(), n)]
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def compute_distinct_1(texts: list[str]) -> float:
    """distinct-1: unique unigrams / total unigrams over the set."""
    return compute_distinct_n(texts, 1)


def compute_distinct_2(texts: list[str]) -> float:
    """distinct-2: unique bigrams / total bigrams over the set."""
    return compute_distinct_n(texts, 2)


@lru_cache(maxsize=1)
def _bleu():
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True, smooth_method="exp")


def compute_sentence_bleu(hypothesis: str, references: list[str]) -> float:
    """Multi-reference sentence BLEU scaled to [0, 1] (sacrebleu, exp smoothing, effective order).

    sacrebleu scores an empty hypothesis 0 even against an empty reference; here an
    empty hypothesis matches an empty reference exactly (1.0), so a set of empty
    strings counts as identical rather than maximally diverse.
    """
    if not hypothesis.strip():
        return 1.0 if any(not ref.strip() for ref in references) else 0.0
    score = _bleu().sentence_score(hypothesis, references).score / 100.0
    # sacrebleu can return 100.00000000000004
    return min(max(score, 0.0), 1.0)


def compute_self_bleu_diversity(texts: list[str]) -> float:
    """1 − self-BLEU: 1 − mean_i BLEU(texts[i], references = all other texts). In [0, 1]."""
    if len(texts) < 2:
        return 0.0
    bleus = [compute_sentence_bleu(t, texts[:i] + texts[i + 1 :]) for i, t in enumerate(texts)]
    return 1.0 - sum(bleus) / len(bleus)
