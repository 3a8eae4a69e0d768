"""Diversity functions (docs/algorithms.md §4) against hand-computed values.

The MiniLM-backed checks load the real encoder once (module fixture, ~6 s on CPU) and
are marked slow; the batching logic is also checked fast with a stand-in encoder.
"""

import math

import numpy as np
import pytest

import polyray.embeddings as embeddings_mod
from polyray.diversity import (
    DIVERSITY_FUNCTIONS,
    compute_distinct_n,
    compute_diversity,
    compute_diversity_batch,
    compute_pairwise_cosine_distance,
    semantic_from_embeddings,
    vendi_from_embeddings,
)
from polyray.tasks.countdown import normalise_expression

ALL_NAMES = {"semantic", "vendi", "distinct_1", "distinct_2", "self_bleu", "countdown_expr"}
LEXICAL = sorted(ALL_NAMES - {"semantic", "vendi"})


def test_registry_names_and_unknown():
    assert set(DIVERSITY_FUNCTIONS) == ALL_NAMES
    with pytest.raises(ValueError, match="unknown diversity"):
        compute_diversity("entropy", ["a", "b"])


def test_distinct_n_hand_values():
    texts = ["a b a", "b c"]
    # unigrams a b a b c: 3 unique of 5; bigrams (a b) (b a) (b c): 3 of 3
    assert compute_diversity("distinct_1", texts) == pytest.approx(3 / 5)
    assert compute_diversity("distinct_2", texts) == 1.0
    assert compute_diversity("distinct_2", ["a b", "a b"]) == 0.5
    assert compute_diversity("distinct_1", ["", "x y"]) == 1.0  # empty strings add no n-grams
    assert compute_diversity("distinct_2", ["a", "b"]) == 0.0  # no bigrams at all
    assert compute_distinct_n(["a b c", "a b d"], 3) == 1.0
    with pytest.raises(ValueError):
        compute_distinct_n(["a"], 0)


def test_self_bleu_hand_values():
    # each against the other: p1..p4 = 3/4, 2/3, 1/2, and 0/1 smoothed ("exp") to 1/2; equal lengths, BP = 1
    bleu = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(1 / 2)) / 4)
    assert compute_diversity("self_bleu", ["a b c d", "a b c e"]) == pytest.approx(1 - bleu, abs=1e-12)
    assert compute_diversity("self_bleu", ["a b c d"] * 3) == pytest.approx(0.0, abs=1e-12)
    assert compute_diversity("self_bleu", ["a b c d", "w x y z"]) == 1.0
    # a third text identical to one of them gives those two BLEU 1 against the others
    three = compute_diversity("self_bleu", ["a b c d", "a b c d", "a b c e"])
    assert three == pytest.approx(1 - (1 + 1 + bleu) / 3, abs=1e-12)
    assert compute_diversity("self_bleu", ["", ""]) == 0.0  # two empty texts are identical
    assert compute_diversity("self_bleu", ["", "a b"]) == 1.0


def test_countdown_expr_normalisation():
    assert normalise_expression("1+2") == normalise_expression("(1 + 2)") == "1 + 2"
    assert normalise_expression(" ((1+2))*3\nsome trailing text") == "(1 + 2) * 3"
    assert normalise_expression("  not an expr ") == "not an expr"
    assert compute_diversity("countdown_expr", ["1+2", "(1 + 2)", "2+1"]) == pytest.approx(2 / 3)
    assert compute_diversity("countdown_expr", ["3*4", " 3 * 4 ", "((3)*4)", "3*4"]) == pytest.approx(1 / 4)
    assert compute_diversity("countdown_expr", ["", "", "x"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_small_sets(name, monkeypatch):
    monkeypatch.setattr(embeddings_mod, "get_encoder", lambda name=None, dtype="float32": FakeEncoder())
    expected_single = 1.0 if name == "vendi" else 0.0  # Vendi is an effective item count, in [1, n]
    assert compute_diversity(name, ["just one"]) == expected_single
    assert compute_diversity(name, []) == 0.0


def test_semantic_and_vendi_from_hand_embeddings():
    e = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cos: 0, 1/√2, 1/√2
    assert semantic_from_embeddings(e) == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3, abs=1e-12)
    assert semantic_from_embeddings(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-12)
    assert semantic_from_embeddings(np.ones((1, 3))) == 0.0
    D = compute_pairwise_cosine_distance(e)
    assert np.allclose(np.diag(D), 0) and np.allclose(D, D.T) and D[0, 1] == pytest.approx(1.0)
    # Vendi: identical -> 1; orthogonal -> n; scale of the rows does not matter
    assert vendi_from_embeddings(np.tile([[0.2, 0.5, 0.1]], (5, 1))) == pytest.approx(1.0, abs=1e-9)
    for n in (2, 3, 6):
        assert vendi_from_embeddings(3.0 * np.eye(n)) == pytest.approx(n, abs=1e-9)
    # two identical + one orthogonal: eig(K/3) = {2/3, 1/3}
    ent = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert vendi_from_embeddings(np.array([[1.0, 0], [1.0, 0], [0, 1.0]])) == pytest.approx(math.exp(ent), abs=1e-12)
    torch = pytest.importorskip("torch")
    assert vendi_from_embeddings(torch.eye(4, requires_grad=True)) == pytest.approx(4.0)


class FakeEncoder:
    """Deterministic stand-in for MiniLM: normalised letter histograms; counts encode calls."""

    def __init__(self):
        self.calls = []

    def encode(self, texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False):
        self.calls.append(list(texts))
        E = np.zeros((len(texts), 27), dtype=np.float32)
        for i, t in enumerate(texts):
            E[i, 26] = 1.0  # keeps the empty string a non-zero vector, as MiniLM's [CLS]/[SEP] do
            for ch in t.lower():
                if ch.isalpha() and ch.isascii():
                    E[i, ord(ch) - 97] += 1.0
        return E / np.linalg.norm(E, axis=1, keepdims=True)


GROUPS = [
    ["the cat sat", "a dog ran", "the cat sat", ""],
    ["1+2", "(1 + 2)", "2 + 1"],
    ["alone"],
    ["zebra", "zebra crossing"],
]


@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_batched_equals_unbatched_one_encode_call(name, monkeypatch):
    fake = FakeEncoder()
    monkeypatch.setattr(embeddings_mod, "get_encoder", lambda name=None, dtype="float32": fake)
    singles = [compute_diversity(name, g) for g in GROUPS]
    fake.calls.clear()
    batched = compute_diversity_batch(name, GROUPS)
    assert batched == pytest.approx(singles, abs=1e-6)
    if name in ("semantic", "vendi"):
        assert len(fake.calls) == 1  # every text of every group in one call, each distinct text once
        assert sorted(fake.calls[0]) == sorted({t for g in GROUPS for t in g})
    else:
        assert fake.calls == []


def test_loo_marginals_match_direct_values_in_one_encode_call(monkeypatch):
    from polyray.objectives.polychromic import compute_diversity_advantages

    fake = FakeEncoder()
    monkeypatch.setattr(embeddings_mod, "get_encoder", lambda name=None, dtype="float32": fake)
    groups = [["the cat sat", "a dog ran", "cats sit"], ["x", "y", "x"]]
    adv = compute_diversity_advantages("semantic", groups, "loo", 2)
    assert len(fake.calls) == 1
    for b, g in enumerate(groups):
        full = compute_diversity("semantic", g)
        direct = [full - compute_diversity("semantic", g[:i] + g[i + 1 :]) for i in range(len(g))]
        assert adv[b].tolist() == pytest.approx(direct, abs=1e-9)


@pytest.fixture(scope="module")
def minilm():
    return embeddings_mod.get_encoder()


@pytest.mark.slow
def test_minilm_semantic_and_vendi(minilm):
    cat = "The cat sat on the mat."
    related = ["The cat sat on the mat.", "A kitten is sitting on a rug."]
    unrelated = ["The cat sat on the mat.", "Quarterly tax revenue exceeded the forecast."]
    assert compute_diversity("semantic", [cat] * 3) == pytest.approx(0.0, abs=1e-6)
    assert compute_diversity("vendi", [cat] * 3) == pytest.approx(1.0, abs=1e-5)
    assert compute_diversity("semantic", unrelated) > compute_diversity("semantic", related) + 0.2
    assert compute_diversity("vendi", unrelated) > compute_diversity("vendi", related)
    groups = [related, unrelated, [cat, "", "Stock prices fell sharply.", "Dogs bark at night."], [""]]
    for name in ("semantic", "vendi"):
        batched = compute_diversity_batch(name, groups, batch_size=2)
        assert batched == pytest.approx([compute_diversity(name, g) for g in groups], abs=1e-5)
        low, high = (1.0, len(groups[2])) if name == "vendi" else (0.0, 2.0)
        assert low < batched[2] <= high  # four mostly unrelated texts, one empty
    E = embeddings_mod.embed_texts(["", "x"])
    assert E.shape == (2, 384) and np.all(np.isfinite(E))


@pytest.mark.slow
def test_a_bfloat16_encoder_scores_as_float32_does_within_its_tolerance(minilm):
    """The training option ``embedding_dtype: bfloat16``: its own cached encoder, unit-norm float32 rows whose
    cosines are within 0.01 of float32's, and leave-one-out advantages that rank the samples alike."""
    from polyray.objectives.polychromic import compute_diversity_advantages

    texts = ["(3 + 5) * 2", "3 * 5 + 2", "5 * (3 + 2)", "The cat sat on the mat.", "2 * 8", "16 - 0", "(8 * 2) - 0"]
    full, half = embeddings_mod.embed_texts(texts), embeddings_mod.embed_texts(texts, dtype="bfloat16")
    assert embeddings_mod.get_encoder(embeddings_mod.BUNDLED_ENCODER, "bfloat16") is not minilm
    assert half.dtype == np.float32 and np.allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    gap = np.abs(half @ half.T - full @ full.T).max()
    assert 0 < gap < 0.01  # rounded (not the float32 encoder), within the stated tolerance
    groups = [texts[:3], texts[3:6], [texts[0], texts[6], texts[4]]]
    a32 = compute_diversity_advantages("semantic", groups, "loo", 2)
    a16 = compute_diversity_advantages("semantic", groups, "loo", 2, "bfloat16")
    assert (a16 - a32).abs().max() < 0.01
    assert all(a16[b].argsort().tolist() == a32[b].argsort().tolist() for b in range(len(groups)))


def test_auto_encoder_dtype_is_bfloat16_only_where_the_cpu_has_it(monkeypatch, capsys):
    from polyray.config import PolychromicSFTPhaseConfig
    from polyray.rollout.diversity_scorer import embedding_dtype_of

    cfg = PolychromicSFTPhaseConfig(name="poly", type="polychromic_sft")
    assert cfg.embedding_dtype == "auto"
    for native, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(embeddings_mod, "native_bfloat16", lambda native=native: native)
        assert embeddings_mod.resolve_dtype("auto") == want
        assert (
            embeddings_mod.resolve_dtype("float32") == "float32"
            and embeddings_mod.resolve_dtype("bfloat16") == "bfloat16"
        )
        assert embedding_dtype_of(cfg) == want
        assert f"sentence encoder runs in {want} (embedding_dtype: auto)" in capsys.readouterr().out
    assert embedding_dtype_of(cfg.model_copy(update={"diversity": "countdown_expr"})) == "float32"
    assert capsys.readouterr().out == ""  # no encoder: nothing to say


def test_a_preloaded_encoder_is_loaded_once_and_its_failure_is_raised_at_first_use(monkeypatch):
    """The driver's background load and an evaluation asking meanwhile share one load; a load that fails in
    the background raises where the evaluation asks, not in the thread."""
    import functools
    import threading

    from polyray.diversity import preload_encoders

    started, release, loads = threading.Event(), threading.Event(), []

    def slow_load(name, dtype):
        loads.append((name, dtype))
        started.set()
        release.wait(5)
        return object()

    # cached like the real loader: what the lock guards is the first load
    monkeypatch.setattr(embeddings_mod, "_load_encoder", functools.lru_cache(slow_load))
    assert not preload_encoders(["distinct_2"])  # nothing embeds: nothing loads
    assert preload_encoders(["distinct_2", "semantic"]) and started.wait(5)
    got = []
    asker = threading.Thread(target=lambda: got.append(embeddings_mod.get_encoder()))
    asker.start()
    asker.join(0.2)
    assert asker.is_alive()  # waits for the background load instead of starting its own
    release.set()
    asker.join(5)
    assert len(loads) == 1 and got

    def failing_load(name, dtype):
        raise OSError("no such model directory")

    monkeypatch.setattr(embeddings_mod, "_load_encoder", failing_load)
    embeddings_mod.preload_encoder("elsewhere").join(5)
    with pytest.raises(OSError, match="no such model"):
        embeddings_mod.get_encoder("elsewhere")
