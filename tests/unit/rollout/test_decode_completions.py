"""The rollout worker's completion texts (polyray.rollout.worker.decode_completions), against each
tokenizer's decode of the whole prompt + completion, on tokenizers built here (nothing downloaded).
The match with vLLM's own detokenizer is checked on the real engine
(tests/integration/test_rollout_sync.py)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from polyray.rollout.worker import decode_completions

CORPUS = ["the cat sat on the mat", "make 24 from 3 5 7 8", "answer: (3 + 5) * 8 - 7 = 57", "héllo wörld"] * 4


def sentencepiece_like() -> PreTrainedTokenizerFast:
    """A Metaspace tokenizer (as Llama's and Mistral's): a text's leading space is dropped when decoded."""
    words = sorted({"▁" + w for line in CORPUS for w in line.split()})
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def byte_level() -> PreTrainedTokenizerFast:
    """A byte-level BPE (as Qwen's and the embedded model's), trained on the corpus."""
    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=120, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


@pytest.mark.parametrize("build", [sentencepiece_like, byte_level])
def test_a_completion_reads_as_it_does_after_its_prompt(build):
    tok = build()
    prompt = tok.encode("make 24 from 3 5 7 8 answer:")
    completions = [tok.encode(" (3 + 5) * 8"), tok.encode(" the cat") + [tok.eos_token_id], [tok.eos_token_id], []]
    texts = decode_completions(tok, prompt, completions)
    for ids, text in zip(completions, texts):
        whole = tok.decode(prompt + ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        alone = tok.decode(prompt, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert whole == alone + text  # the completion's text is what it adds to the prompt's
    assert texts[2:] == ["", ""]  # EOS alone: no text


def test_the_leading_space_a_sentencepiece_decode_drops_is_kept():
    tok = sentencepiece_like()
    ids = tok.encode(" the cat")
    assert tok.decode(ids) == "the cat"  # what decoding the completion alone would give
    assert decode_completions(tok, tok.encode("on the mat"), [ids]) == [" the cat"]
