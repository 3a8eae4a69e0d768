"""GenerationRequest: what one generation call asks of the rollout pool and its workers, as one
picklable value (it crosses to the Ray actors)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from polyray.config import SamplingConfig


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """``n`` samples for each of ``prompts`` under ``sampling``, from the base model or one adapter.

    ``version``: the adapter version to sample (None or 0: the base model); ``adapter_name``: a named
    adapter (:meth:`RolloutPool.add_named_adapter`) instead of a version. ``seeds``: one sampling seed per
    prompt (:func:`polyray.rollout.sampling.request_seeds`), None for the engine's stream. ``reference``:
    the KL reference each sample is also scored under right after sampling, into its ``ref_logprobs``
    (``BASE_MODEL`` for the adapter-less base, else a named adapter's name); None: not scored.
    :meth:`RolloutPool.submit` splits a request into one chunk per worker (:meth:`split`)."""

    # texts, or vLLM TokensPrompt dicts of token ids (RolloutWorker.draw)
    prompts: list[str] | list[dict[str, Any]]
    n: int
    sampling: SamplingConfig
    version: int | None = None
    adapter_name: str | None = None
    seeds: list[int] | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.seeds is not None and len(self.seeds) != len(self.prompts):
            raise ValueError(f"{len(self.seeds)} seeds for {len(self.prompts)} prompts")

    def split(self, parts: int) -> list[tuple[int, GenerationRequest]]:
        """At most ``parts`` contiguous chunks of ``ceil(len(prompts) / parts)`` prompts (at least 1), each as
        (index of its first prompt, the request for its prompts and their seeds); no prompts: no chunks."""
        if parts < 1:
            raise ValueError(f"cannot split a generation request into {parts} parts")
        size = max(1, -(-len(self.prompts) // parts))
        return [
            (
                start,
                replace(
                    self,
                    prompts=self.prompts[start : start + size],
                    seeds=None if self.seeds is None else list(self.seeds[start : start + size]),
                ),
            )
            for start in range(0, len(self.prompts), size)
        ]
