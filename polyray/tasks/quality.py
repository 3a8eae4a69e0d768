"""Quality of a completion against a reference: ROUGE-1/2/L and embedding cosine.

Used by the graded JSONL tasks as their reward (``quality``) and reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from polyray.embeddings import embed_texts


def compute_rouge(
    preds: Sequence[str], refs: Sequence[str], *, aggregate: bool = True
) -> dict[str, float] | dict[str, np.ndarray]:
    """ROUGE-1/2/L F-measure of each prediction against its reference (rouge-score, stemmed).

    Returns:
        {"rouge1", "rouge2", "rougeL"} -> mean F (``aggregate=True``) or (N,) per-pair F.
    """
    from rouge_score import rouge_scorer

    if len(preds) != len(refs):
        raise ValueError(f"preds has {len(preds)} items, refs has {len(refs)}")
    if not preds:
        raise ValueError("preds is empty")
    names = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    per = {m: np.empty(len(preds)) for m in names}
    for i, (p, r) in enumerate(zip(preds, refs)):
        # score(target, prediction)
        sc = scorer.score(r, p)
        for m in names:
            per[m][i] = sc[m].fmeasure
    if aggregate:
        return {m: float(v.mean()) for m, v in per.items()}
    return per


def compute_embedding_similarity(
    preds: Sequence[str] | None = None,
    refs: Sequence[str] | None = None,
    *,
    pred_embeddings: np.ndarray | None = None,
    ref_embeddings: np.ndarray | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    aggregate: bool = True,
) -> float | np.ndarray:
    """Cosine similarity between each prediction and its reference in embedding space.

    Either pass texts (encoded with ``encode``, default: the shared MiniLM
    encoder of :mod:`polyray.embeddings`) or precomputed (N, d) ``pred_embeddings`` and ``ref_embeddings``.

    Returns:
        mean cosine (``aggregate=True``) or (N,) per-pair cosines.
    """
    if pred_embeddings is None or ref_embeddings is None:
        if preds is None or refs is None:
            raise ValueError("pass preds and refs, or pred_embeddings and ref_embeddings")
        if len(preds) != len(refs):
            raise ValueError(f"preds has {len(preds)} items, refs has {len(refs)}")
        enc = encode or embed_texts
        pred_embeddings = np.asarray(enc(list(preds)), dtype=np.float64)
        ref_embeddings = np.asarray(enc(list(refs)), dtype=np.float64)
    a = np.asarray(pred_embeddings, dtype=np.float64)
    b = np.asarray(ref_embeddings, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"pred_embeddings {a.shape} and ref_embeddings {b.shape} must be equal (N, d), N > 0")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    if np.any(na == 0) or np.any(nb == 0):
        raise ValueError("embeddings contain a zero vector; cosine is undefined")
    cos = np.einsum("nd,nd->n", a, b) / (na * nb)
    return float(cos.mean()) if aggregate else cos


def compute_embedding_cosines(preds: list[str], refs: list[str]) -> np.ndarray:
    """Embedding cosine per pair, all texts in one encoder call; an empty text has no direction: 0."""
    unique = list(dict.fromkeys(preds + refs))
    emb = np.asarray(embed_texts(unique), dtype=np.float64)
    row = {t: i for i, t in enumerate(unique)}
    a, b = emb[[row[t] for t in preds]], emb[[row[t] for t in refs]]
    ok = (np.linalg.norm(a, axis=1) > 0) & (np.linalg.norm(b, axis=1) > 0)
    out = np.zeros(len(preds))
    if ok.any():
        out[ok] = compute_embedding_similarity(pred_embeddings=a[ok], ref_embeddings=b[ok], aggregate=False)
    return out
