"""vLLM's engine processes die with the process that built the engine (polyray.rollout.vllm_plugin).

A host process builds ``AsyncLLM`` as a generation replica does (its engine arguments and environment,
on the thread that runs its event loop and lives as long as the process), serves one request, and is
then SIGKILLed. Every process below it (vLLM's ``EngineCore``; on CPU no ``VllmWorker`` below that one,
the replica's environment keeps the model in the engine core) must be gone within seconds. The host is a plain interpreter, not a Ray worker: Ray's raylet may kill a dead
worker's process group on its own (``RAY_process_group_cleanup_enabled``), which would hide whether the
engine dies by itself; a replica is also killed with its raylet, when a node goes, and then nothing is
left to clean up. Without the plugin's ``PR_SET_PDEATHSIG`` the engine core keeps running, re-parented,
until someone kills it by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

GRACE_S = 10.0
HOST = """
import asyncio, json, os, sys, time
from polyray.config.services import GenerationServiceConfig
from polyray.generation.deployment import engine_args, engine_env

cfg = GenerationServiceConfig.model_validate(json.loads(sys.argv[1]))
for key, value in engine_env(cfg).items():
    os.environ.setdefault(key, value)

async def main():
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(engine_args(cfg))
    await asyncio.sleep(2)  # the engine keeps serving while its host lives: nothing fires early
    final = None
    async for out in engine.generate("nums 3 4", SamplingParams(max_tokens=4, seed=0), "r0"):
        final = out
    print("ready", len(final.outputs[0].token_ids), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_engine_core_dies_with_a_sigkilled_host(model_dir):
    import json

    import psutil

    config = {"model_dir": str(model_dir), "max_num_seqs": 4}
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, json.dumps(config)], stdout=subprocess.PIPE, text=True, env=env
    )
    below = []
    try:
        line = ""
        for line in host.stdout:  # after the engine started and answered (vLLM may log lines before)
            if line.startswith("ready"):
                break
        assert line.startswith("ready") and int(line.split()[1]) > 0, line
        below = psutil.Process(host.pid).children(recursive=True)
        titles = {p.pid: " ".join(p.cmdline()) for p in below}
        assert any("EngineCore" in t for t in titles.values()), titles  # vLLM runs its engine in a child
        # on CPU the model runs in that child, not in a worker process of vLLM's executor below it
        assert not any("Worker" in t for t in titles.values()), titles
        assert all(_running(p) for p in below)

        os.kill(host.pid, signal.SIGKILL)
        host.wait()
        _, alive = psutil.wait_procs(below, timeout=GRACE_S)
        survivors = {p.pid: titles[p.pid] for p in alive if _running(p)}
        assert not survivors, f"outlived their SIGKILLed host by {GRACE_S:g} s: {survivors}"
    finally:
        for p in [*below, psutil.Process(host.pid)] if host.poll() is None else below:
            try:  # never leave them running, whatever the outcome
                p.kill()
            except psutil.NoSuchProcess:
                pass
        host.wait()
