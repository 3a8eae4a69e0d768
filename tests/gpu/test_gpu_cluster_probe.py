"""What a run reads of a GPU node's GPU to plan memory on it (:func:`polyray.cluster.local_gpu`; the Ray task
that runs it on each node is checked without a GPU in ``tests/unit/drivers/test_preflight.py``)."""

from __future__ import annotations

import pytest
import torch

from polyray.cluster import local_gpu

pytestmark = [pytest.mark.gpu]


def test_the_gpu_read_is_the_devices_name_and_total_memory():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpu = local_gpu()
    free, total = torch.cuda.mem_get_info(0)
    assert gpu.name == torch.cuda.get_device_name(0) and gpu.gib == pytest.approx(total / 2**30, rel=1e-6)
    assert 1 < gpu.gib < 1024 and free <= total
    assert gpu.capability == torch.cuda.get_device_capability(0)
    # the driver runs the CUDA this PyTorch was built for (else the device could not have been read)
    assert gpu.built_cuda == torch.version.cuda and gpu.driver_cuda >= int(gpu.built_cuda.split(".")[0]) * 1000
