"""The duplex step path makes the host wait for the device at most once per tick (counted on CPU).

On CUDA each `.item()` / `.tolist()` / `.cpu()` / truth value / blocking host-to-device copy stalls the
model thread until the GPU has caught up; the counter (duplex/models/host_syncs.py) sees the same calls on
CPU. Before the packing in MoshiBatch._step_rows a tick made 6 (3 blocking copies in, 3 reads back).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duplex.models.host_syncs import HostSyncCounter
from duplex.models.moshi_batch import MoshiBatch, StepInput
from duplex.models.spec import resolve_checkpoint

SLOTS = 4


def _ticks(spec: str) -> tuple[MoshiBatch, list[HostSyncCounter]]:
    model = MoshiBatch(resolve_checkpoint(spec), SLOTS, "cpu", torch.float32)
    ones, none = np.ones(SLOTS, dtype=bool), np.zeros(SLOTS, dtype=bool)
    half = np.array([True, False] * (SLOTS // 2))
    pcm = (np.random.default_rng(0).standard_normal((SLOTS, model.frame_samples)) * 0.05).astype(np.float32)
    counters = []
    # first frames, steady ticks, a masked tick, a forced-silent slot
    for execute, first, silent in [(ones, ones, none), (ones, none, none), (half, none, none), (ones, none, half)]:
        with HostSyncCounter() as counter:
            model.step(StepInput(pcm, execute, none, first, silent))
        counters.append(counter)
    return model, counters


@pytest.mark.parametrize("spec", ["tiny:moshi", "tiny:personaplex", "tiny:hibiki"])
def test_one_host_sync_per_tick(spec: str):
    _, counters = _ticks(spec)
    for counter in counters:
        assert counter.count == 1, counter.report()
        assert counter.by_kind() == {"cpu": 1}


def test_counter_sees_the_syncs_it_is_for():
    counter = HostSyncCounter()
    with counter:
        x = torch.arange(4.0)
        host = torch.from_numpy(np.ones(3, dtype=np.float32))
        x.sum().item()
        x.tolist()
        if (x > 2).any():
            pass
        x[x > 1]
        host.to("cpu")                      # host data to the model's device: a blocking copy
        torch.from_numpy(np.ones(3)).to("cpu", non_blocking=True)   # not waited for
        x.to("cpu")                         # already on the device: nothing
    assert counter.by_kind() == {"item": 1, "tolist": 1, "bool": 1, "mask_index": 1, "h2d": 1}
    assert all("test_host_syncs.py" in site for site, _ in counter.report())
