"""A run started from ``init_adapter`` resumes after its driver was killed inside the version-1 put.

The store reserves an id before it writes the weights, so such a kill leaves version 1 handed
out but not stored. The driver must check whether version 1 is *held*, not whether an id was
handed out, or every later ``--resume`` fails at pinning it."""

from __future__ import annotations

import pytest
import torch

from polyray.config import RunConfig
from polyray.drivers.run import INIT_VERSION, publish_init_adapter
from polyray.learner.lora import read_adapter
from polyray.rollout.store import AdapterStore, adapter_hash, open_store, write_adapter_dir

pytestmark = [pytest.mark.ray]


def _adapter() -> dict:
    config = {
        "peft_type": "LORA",
        "r": 1,
        "lora_alpha": 2,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": None,
    }
    return {"config": config, "tensors": {"base_model.model.q_proj.lora_A.weight": torch.ones(1, 4)}}


def test_resume_after_a_kill_inside_the_init_put(ray_cluster, tmp_path):
    import ray

    from polyray.rollout.pool import RolloutPool

    saved = tmp_path / "sft"
    write_adapter_dir(saved, _adapter())
    root = tmp_path / "run" / "adapter_store"
    torn = AdapterStore(str(root))
    torn.reserved, torn.reserved_sha256 = INIT_VERSION, adapter_hash(read_adapter(saved))
    torn._save_state()  # the id was reserved for these weights, then the driver died before they were written
    store = open_store(root)
    try:
        pool = RolloutPool([], store)
        assert pool.newest_version() == INIT_VERSION and not pool.holds(INIT_VERSION)
        version, adapter = publish_init_adapter(RunConfig(init_adapter=str(saved)), pool)  # the resume
        assert (version, adapter) == (INIT_VERSION, str(saved.resolve()))
        assert pool.holds(INIT_VERSION) and ray.get(store.pinned.remote()) == {"init": INIT_VERSION}
        assert publish_init_adapter(RunConfig(init_adapter=str(saved)), pool)[0] == INIT_VERSION  # once only
    finally:
        ray.kill(store)
