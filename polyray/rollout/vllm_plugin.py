"""polyray's vLLM general plugin: vLLM runs :func:`register` in every process it starts (and in the
process that builds the engine), through the ``vllm.general_plugins`` entry point in pyproject.toml.

- **vLLM's child processes die with their parent.** vLLM 0.32 starts the engine core in a child
  process (``EngineCore``, always for ``AsyncLLM``; with vLLM's multiprocessing executor, on CPU
  unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` as polyray's replicas set it, also a ``VllmWorker``
  child of its own); nothing in vLLM, Ray or Serve reaps them when the process that built the engine
  is SIGKILLed (a replica Serve kills, an OOM kill): the worker follows a dead engine core through
  its death pipe, but the engine core outlives the replica, holding its memory and threads. So in
  those children (:func:`is_engine_child`) the plugin sets ``PR_SET_PDEATHSIG`` (:func:`polyray.lifetime.die_with_parent`).
  The kernel sends it when the *thread* that started the child exits. vLLM starts the engine core
  from the thread that builds ``AsyncLLM``/``LLM`` (``CoreEngineProcManager`` calls
  ``Process.start()`` there), and the worker from the engine core's main thread, which runs its busy
  loop until the end. polyray builds engines on threads that live as long as their process: a Serve
  replica's user-code event loop thread (``GenerationDeployment.__init__``), a Ray actor's
  constructor, a benchmark's main thread. An engine built on a short-lived thread (a
  ``threading.Thread`` that returns) would lose its engine core when that thread ends: don't.
  vLLM's ``fork`` start method (outside Ray and off CPU) copies the parent's "plugins loaded" flag,
  so a forked child never runs the plugin and is not covered; Ray actors and CPU engines always spawn.
- **Grouped LoRA matmuls on CPU** (:mod:`polyray.rollout.cpu_lora`).
"""

from __future__ import annotations

import multiprocessing

# vLLM's names for its children: EngineCore[_DPn], VllmWorker-n
ENGINE_PROCESSES = ("EngineCore", "VllmWorker")


def is_engine_child() -> bool:
    """Whether this process is one vLLM started (a multiprocessing child named as vLLM names them)."""
    return multiprocessing.parent_process() is not None and multiprocessing.current_process().name.startswith(
        ENGINE_PROCESSES
    )


def register() -> None:
    """The plugin: die with the parent in vLLM's children, then the CPU LoRA ops (idempotent: vLLM may call it again)."""
    if is_engine_child():
        from polyray.lifetime import die_with_parent

        die_with_parent(multiprocessing.parent_process().pid)
    from polyray.rollout import cpu_lora

    cpu_lora.install()
