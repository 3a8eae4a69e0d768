"""Embedding-based diversity: mean pairwise cosine distance and the Vendi score.

docs/algorithms.md §4. Texts are embedded with the shared MiniLM encoder of
:mod:`polyray.embeddings` (offline, loaded once per process).
The ``*_from_embeddings`` functions take a precomputed (n, d) matrix so evaluation
and training can embed every text of a batch in one ``encode`` call and reuse it.

- semantic: mean over pairs i < j of (1 − cos(e_i, e_j)); 0 for identical texts,
  in [0, 2] (in practice [0, ~1] for MiniLM); 0.0 for fewer than two texts.
- Vendi (Friedman & Dieng 2023, arXiv 2210.02410): exp(−Σ λ log λ) over the
  eigenvalues λ of K/n, K the cosine-similarity matrix. It is an *effective number
  of distinct items* and lies in [1, n] (1: all identical, n: mutually orthogonal),
  not in [0, 1]. Unlike the other diversities it is 1.0 for a single text (one
  effective item) and 0.0 for an empty set.
"""

from __future__ import annotations

import numpy as np

from polyray.embeddings import DEFAULT_BATCH_SIZE, embed_texts


def _as_matrix(embeddings) -> np.ndarray:
    """(n, d) float64 numpy copy of a numpy array, torch tensor or nested list."""
    # torch.Tensor, without importing torch here
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    E = np.asarray(embeddings, dtype=np.float64)
    if E.ndim != 2:
        raise ValueError(f"embeddings must be a (n, d) matrix, got shape {E.shape}")
    return E


def compute_cosine_similarity(embeddings) -> np.ndarray:
    """(n, d) -> (n, n) cosine similarities; rows are L2-normalised first (zero rows stay zero)."""
    E = _as_matrix(embeddings)
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    E = E / np.maximum(norms, 1e-12)
    return np.clip(E @ E.T, -1.0, 1.0)


def compute_pairwise_cosine_distance(embeddings) -> np.ndarray:
    """(n, d) -> (n, n) matrix of 1 − cos, zero diagonal; usable as polychromic ``distances``."""
    D = 1.0 - compute_cosine_similarity(embeddings)
    np.fill_diagonal(D, 0.0)
    return np.clip(D, 0.0, 2.0)


def semantic_from_embeddings(embeddings) -> float:
    """Mean pairwise (1 − cosine) over i < j of an (n, d) embedding matrix; 0.0 when n < 2."""
    E = _as_matrix(embeddings)
    n = E.shape[0]
    if n < 2:
        return 0.0
    D = compute_pairwise_cosine_distance(E)
    iu = np.triu_indices(n, k=1)
    return float(D[iu].mean())


def vendi_from_embeddings(embeddings) -> float:
    """Vendi score exp(H(eig(K/n))) with K the cosine-similarity matrix; in [1, n] (see module doc)."""
    E = _as_matrix(embeddings)
    n = E.shape[0]
    if n == 0:
        return 0.0
    # K/n is PSD with trace 1
    eig = np.linalg.eigvalsh(compute_cosine_similarity(E) / n)
    # drop round-off negatives and zeros: 0 log 0 = 0
    eig = eig[eig > 1e-12]
    entropy = float(-(eig * np.log(eig)).sum())
    return float(min(max(np.exp(entropy), 1.0), n))


def compute_semantic_diversity(texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """Mean pairwise (1 − cosine) of MiniLM embeddings; 0.0 for fewer than two texts."""
    if len(texts) < 2:
        return 0.0
    return semantic_from_embeddings(embed_texts(texts, batch_size=batch_size))


def compute_vendi_diversity(texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """Vendi score of MiniLM embeddings, in [1, n]; 1.0 for one text, 0.0 for none."""
    if len(texts) < 2:
        return float(len(texts))
    return vendi_from_embeddings(embed_texts(texts, batch_size=batch_size))
