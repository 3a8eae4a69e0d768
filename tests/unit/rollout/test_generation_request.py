"""GenerationRequest, the one record a generation call hands the rollout pool and its workers.

- ``split`` gives the pool's per-worker chunks: contiguous, each prompt once and in order, with its own
  seed alongside, and the rest of the request unchanged; no prompts give no chunks.
- Seeds that do not match the prompts one to one are refused, naming both counts.
- It survives pickling (it crosses to the Ray actors).
"""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

from polyray.config import SamplingConfig
from polyray.rollout.request import GenerationRequest

SAMPLING = SamplingConfig(temperature=0.7, max_tokens=5, stop=["\n"])


def _request(count: int, seeded: bool = True) -> GenerationRequest:
    return GenerationRequest(
        prompts=[f"p{i}" for i in range(count)],
        n=3,
        sampling=SAMPLING,
        version=4,
        adapter_name=None,
        seeds=[100 + i for i in range(count)] if seeded else None,
        reference="run/kl-reference",
    )


@pytest.mark.parametrize(("count", "parts"), [(0, 3), (1, 4), (2, 5), (5, 1), (5, 2), (6, 3), (7, 3), (8, 8), (9, 4)])
@pytest.mark.parametrize("seeded", [True, False])
def test_split_covers_every_prompt_once_in_order_with_its_seed(count, parts, seeded):
    request = _request(count, seeded)
    chunks = request.split(parts)

    assert len(chunks) <= parts and (len(chunks) > 0) == (count > 0)
    size = max(1, -(-count // parts))
    assert [start for start, _ in chunks] == list(range(0, count, size))
    prompts = [p for _, part in chunks for p in part.prompts]
    assert prompts == request.prompts
    for start, part in chunks:
        assert part.prompts == request.prompts[start : start + len(part.prompts)]
        if seeded:
            assert part.seeds == request.seeds[start : start + len(part.prompts)]
        else:
            assert part.seeds is None
        # everything but the prompts and their seeds is the whole request's
        assert (part.n, part.sampling, part.version, part.adapter_name, part.reference) == (
            request.n,
            request.sampling,
            request.version,
            request.adapter_name,
            request.reference,
        )


def test_split_into_no_parts_is_refused():
    with pytest.raises(ValueError, match="0 parts"):
        _request(3).split(0)


def test_seeds_that_do_not_match_the_prompts_are_refused():
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        GenerationRequest(prompts=["a", "b", "c"], n=1, sampling=SAMPLING, seeds=[1, 2])
    with pytest.raises(ValueError, match="1 seeds for 0 prompts"):
        GenerationRequest(prompts=[], n=1, sampling=SAMPLING, seeds=[1])


def test_fields_are_keyword_only():
    with pytest.raises(TypeError):
        GenerationRequest(["a"], 1, SAMPLING)


@pytest.mark.parametrize("module", [pickle, cloudpickle], ids=["pickle", "cloudpickle"])
def test_the_request_pickles(module):
    request = _request(4)
    again = module.loads(module.dumps(request))
    assert again == request and again is not request
    assert again.split(2) == request.split(2)
