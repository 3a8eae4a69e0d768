"""Which adapters one generation replica serves, by model id, and which requests hold them.

Model ids: the base model's id; ``policy-vN`` for every version the run's adapter store holds;
``latest`` for the newest of them; named adapters (``<run>/<phase>``). A request resolves its id
once, at its start (``latest`` becomes the ``policy-vN`` it names then) and holds that adapter until
it ends, streaming included: a version published meanwhile moves ``latest`` for later requests only.
Versions are pulled from the store on first use (hash-checked, like the rollout workers') and
the newest one as soon as it is published (:meth:`AdapterCatalog.refresh`); past
``keep_versions`` loaded, the oldest version no request holds is unloaded (never the newest).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from polyray.rollout.store import check_adapter, write_adapter_dir

LATEST = "latest"
# At most 18 digits: a version is an int64 in the store, and int() of thousands of digits raises
# (Python's limit on digits) instead of naming an unknown model.
_POLICY = re.compile(r"^policy-v([1-9][0-9]{0,17})$")


class UnknownModelError(LookupError):
    """A model id the service does not serve."""


def policy_name(version: int) -> str:
    return f"policy-v{version}"


def policy_version(name: str) -> int | None:
    match = _POLICY.match(name)
    return int(match.group(1)) if match else None


class AdapterCatalog:
    """``engine``: vLLM's engine client; ``models``: its ``OpenAIServingModels`` (the LoRA names vLLM's
    serving layer resolves); ``store``: the run's adapter store actor, or None."""

    def __init__(self, engine, models, base: str, named: dict[str, str], store, root: Path, keep: int, metrics=None):
        """``metrics``: a :class:`polyray.telemetry.Metrics` with the service's gauges and histograms."""
        self.engine, self.models = engine, models
        self.metrics = metrics
        self.base, self.named = base, dict(named)
        self.store, self.root, self.keep = store, root, keep
        # versions the store holds, as of the last refresh
        self.stored: list[int] = []
        # version -> its directory here
        self.loaded: dict[int, Path] = {}
        self.holds: Counter[str] = Counter()
        # loads and unloads one at a time: each sees the others' effects
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Register the named adapters and pull the newest version: done before the replica serves."""
        for name, path in self.named.items():
            await self._register(name, Path(path))
        await self.refresh()

    async def refresh(self) -> None:
        """Learn what the store holds; load a newly published newest version now, so ``latest`` serves it."""
        if self.store is None:
            return
        stored = [r.version for r in await self.store.records_list.remote()]
        async with self._lock:
            self.stored = stored
            if stored and stored[-1] not in self.loaded:
                await self._load(stored[-1])
                await self._evict()

    @property
    def newest(self) -> int:
        return self.stored[-1] if self.stored else 0

    def model_ids(self) -> list[str]:
        ids = [self.base]
        if self.stored:
            ids.append(LATEST)
        return ids + [policy_name(v) for v in self.stored] + list(self.named)

    def resolve(self, model: str) -> str:
        """The adapter name ``model`` means now (``latest`` -> ``policy-vN``)."""
        if model == LATEST:
            if not self.newest:
                raise UnknownModelError("no policy version has been published yet")
            return policy_name(self.newest)
        if model == self.base or model in self.named or policy_version(model) is not None:
            return model
        raise UnknownModelError(f"the model {model!r} does not exist; GET /v1/models lists the served ones")

    async def acquire(self, model: str) -> str:
        """Resolve ``model``, make sure its adapter is loaded, and hold it; returns the name to serve."""
        name = self.resolve(model)
        version = policy_version(name)
        async with self._lock:
            if version is not None and version not in self.loaded:
                await self._load(version)
            self.holds[name] += 1
            try:
                await self._evict()
            # cancelled or failed: the caller never gets the name to release
            except BaseException:
                self._drop(name)
                raise
        return name

    async def hold(self, model: str) -> Hold:
        """:meth:`acquire` as a :class:`Hold`, whose release is once-only and survives cancellation."""
        return Hold(self, await self.acquire(model))

    async def release(self, name: str) -> None:
        if self._drop(name):
            async with self._lock:
                await self._evict()

    def _drop(self, name: str) -> bool:
        """One hold on ``name`` less; True when it was the last."""
        self.holds[name] -= 1
        if self.holds[name] <= 0:
            del self.holds[name]
            return True
        return False

    # ---- loading --------------------------------------------------------------------------
    # ---- under self._lock ----
    async def _load(self, version: int) -> None:
        started = time.perf_counter()
        got = await self.store.get.remote(version) if self.store is not None else None
        if got is None:
            raise UnknownModelError(f"the model {policy_name(version)!r} does not exist (not in the adapter store)")
        adapter, record = got
        path = self.root / policy_name(version)
        await asyncio.to_thread(_write_checked, path, adapter, version, record.sha256)
        await self._register(policy_name(version), path)
        self.loaded[version] = path
        self._record(load_s=time.perf_counter() - started)

    def _record(self, load_s: float | None = None) -> None:
        if self.metrics is None:
            return
        if load_s is not None:
            self.metrics.observe("polyray_generation_adapter_load_seconds", load_s)
        self.metrics.set("polyray_generation_versions_loaded", len(self.loaded))
        self.metrics.set("polyray_generation_latest_version", self.newest)

    async def _register(self, name: str, path: Path) -> None:
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        result = await self.models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=name, lora_path=str(path)))
        error = getattr(result, "error", None)
        if error is not None:
            raise RuntimeError(f"loading adapter {name} from {path}: {error.message}")

    async def _evict(self) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        while len(self.loaded) > self.keep:
            idle = [v for v in sorted(self.loaded) if v != self.newest and not self.holds[policy_name(v)]]
            if not idle:
                # every older version is in use: they go when released
                return
            version = idle[0]
            name = policy_name(version)
            lora_id = self.models.lora_requests[name].lora_int_id
            await self.models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
            # frees its slot in the engine's adapter cache
            await self.engine.remove_lora(lora_id)
            shutil.rmtree(self.loaded.pop(version), ignore_errors=True)
            self._record()

    def describe(self) -> dict[str, Any]:
        return {
            "newest": self.newest,
            "stored": list(self.stored),
            "loaded": sorted(self.loaded),
            "held": dict(self.holds),
        }


class Hold:
    """A request's hold on one adapter: :meth:`release` is idempotent and shielded.

    A request is cancelled when its client goes away or its time runs out, and ``CancelledError``
    passes every ``except Exception``; a response stream whose first chunk was never sent is
    never iterated, so its ``finally`` never runs. A version held that way would stay loaded for
    good, so the deployment releases from ``finally`` blocks and the response itself, and the
    release runs to its end even if the task awaiting it is cancelled again.
    """

    def __init__(self, catalog: AdapterCatalog, name: str):
        self.catalog, self.name = catalog, name
        self.released = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        await asyncio.shield(self.catalog.release(self.name))


def _write_checked(path: Path, adapter: dict[str, Any], version: int, sha256: str) -> None:
    # an id means one set of weights
    check_adapter(adapter, version, sha256)
    write_adapter_dir(path, adapter)
