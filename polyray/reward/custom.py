"""Reward "custom": a function of the user's, named ``my_rewards.py:score`` or ``package.module:score``.

It is called once per batch with keywords, one list entry per item, in order::

    def score(prompts: list[str], completions: list[str], references: list[str | None],
              metadata: list[dict]) -> list[float]

(``**kwargs`` may take the keywords it ignores), and must return one finite number per item; any
other output, or an exception, is a :class:`CustomRewardError` naming the function (the file's
name, not the server's path) and the item, never the user's traceback. Scores are graded (not
binary), so pass@k advantages refuse it.

``function`` is a server-only parameter: an HTTP request cannot make the reward service import
code; the service's operator names it in the Serve config (``rewards: {custom: {function: ...}}``)
or a run passes it through the learner's handle. Either way the replicas get the code through
Ray's runtime environment (:func:`runtime_env`): a file is copied into a package of its own
(:func:`polyray.config.functions.shipped_package`) that ``py_modules`` uploads, a local module's
top-level package is uploaded as is; installed packages are expected on every node.
"""

from __future__ import annotations

import math
import numbers
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from polyray.config.functions import (
    FunctionRefError,
    describe_exception,
    is_file_ref,
    load_function,
    resolve_ref,
    shipped_package,
    split_ref,
)
from polyray.io import DataError
from polyray.reward.base import ParameterisedReward, ParamsModel, RewardError, RewardItem, RewardResult, register


class CustomRewardError(RewardError, DataError):
    """A custom reward function raised or returned something other than one finite number per item
    (the user's to fix: the CLI shows the one line, also from inside a Ray Train worker)."""


def shown_ref(ref: str) -> str:
    """``ref`` as errors show it: a file by its name only (an HTTP caller never sees the server's paths)."""
    where, attr = split_ref(ref)
    return f"{Path(where).name}:{attr}" if is_file_ref(where) else ref


def check_scores(ref: str, out: Any, n: int) -> list[float]:
    """``out`` as ``n`` floats, or a :class:`CustomRewardError` saying what is wrong with it."""
    name = f"custom reward {shown_ref(ref)}"
    if isinstance(out, (str, bytes, dict)) or not isinstance(out, Iterable) or not hasattr(out, "__len__"):
        raise CustomRewardError(
            f"{name} returned a {type(out).__name__}; it must return a list of {n} floats, one per item"
        )
    if len(out) != n:
        raise CustomRewardError(f"{name} returned {len(out)} scores for {n} items; it must return one per item")
    scores = []
    for i, x in enumerate(out):
        # numpy / torch scalars
        if hasattr(x, "item") and getattr(x, "ndim", None) == 0:
            x = x.item()
        if not isinstance(x, numbers.Real):
            raise CustomRewardError(f"{name}: item {i} scored {x!r} ({type(x).__name__}); each score must be a number")
        if not math.isfinite(float(x)):
            raise CustomRewardError(f"{name}: item {i} scored {float(x)}; each score must be finite")
        scores.append(float(x))
    return scores


@register("custom")
class CustomReward(ParameterisedReward):
    """Your own function: score(prompts, completions, references, metadata) -> one float per item."""

    # a request may not make the server import code
    server_only_params = ("function",)

    class Params(ParamsModel):
        function: str = Field(
            ...,
            description="module:function or path/to/file.py:function (a relative path: from the working directory).",
        )

        @field_validator("function")
        @classmethod
        def _loads(cls, v: str) -> str:
            try:
                ref = resolve_ref(v)
                load_function(ref)
            except FunctionRefError as exc:
                raise ValueError(str(exc)) from None
            return ref

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.fn = load_function(self.config.function)

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        ref = self.config.function
        try:
            out = self.fn(
                prompts=[item.prompt for item in items],
                completions=[item.completion for item in items],
                references=[item.reference for item in items],
                metadata=[dict(item.metadata) for item in items],
            )
        except Exception as exc:  # noqa: BLE001 - the user's code: one line naming it, not their traceback
            raise CustomRewardError(f"custom reward {shown_ref(ref)} raised {describe_exception(exc)}") from None
        return [RewardResult(score=s) for s in check_scores(ref, out, len(items))]


def _is_installed(module_name: str) -> bool:
    """Whether a module comes with the environment (standard library, site-packages, polyray itself)."""
    top = module_name.split(".")[0]
    if top == "polyray" or top in sys.stdlib_module_names:
        return True
    module = sys.modules.get(top)
    origin = getattr(module, "__file__", None) or ""
    return module is None or any(part in ("site-packages", "dist-packages") for part in Path(origin).parts)


def runtime_env(refs: Iterable[str], staging: Path | None = None, upload: bool | None = None) -> dict[str, Any]:
    """Ray runtime environment that brings ``refs``' code to a replica on any node (``{}``: nothing to ship).

    A file is copied into ``staging/<shipped_package>/`` (a package of its own, so a ``json.py``
    shadows nothing) and that folder goes to ``py_modules``; a module reference ships its
    top-level package unless it is installed. Connected to Ray, the folders are uploaded to the
    cluster now (a Serve deployment's options take only uploaded packages, not local paths);
    otherwise they stay local paths, for ``ray.init(runtime_env=...)``. ``upload`` overrides
    that choice (``None``: upload when connected)."""
    # one entry per folder or module
    py_modules: dict[str, Any] = {}
    for ref in dict.fromkeys(resolve_ref(r) for r in refs):
        # fails here, on the driver, naming the reference
        load_function(ref)
        where, _ = split_ref(ref)
        if is_file_ref(where):
            staging = staging or Path(tempfile.mkdtemp(prefix="polyray-functions-"))
            package = staging / shipped_package(where)
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").write_text("")
            shutil.copyfile(where, package / Path(where).name)
            py_modules[str(package)] = str(package)
        elif not _is_installed(where):
            top = where.split(".")[0]
            py_modules[top] = sys.modules[top]
    if not py_modules:
        return {}
    env = {"py_modules": list(py_modules.values())}
    import ray

    if ray.is_initialized() if upload is None else upload:
        # what ray.init does with a job's py_modules (Ray pins it: ray==2.60.0); Serve itself does not
        from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

        env = upload_py_modules_if_needed(
            env, include_gitignore=False, scratch_dir=str(staging or tempfile.gettempdir())
        )
    return env
