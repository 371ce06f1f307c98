"""A step computes only the leading slots in use (CPU), and a conversation's numbers do not change for it.

The tiny Moshi in process: the same conversation is stepped with every slot computed and with only the
active prefix, while neighbours beyond the prefix join and leave (so the prefix grows and shrinks under
it), greedy and seeded; outputs must be bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duplex.models.moshi_batch import ROW_BUCKET, MoshiBatch, StepInput
from duplex.models.sampling import SamplingSettings
from duplex.models.spec import resolve_checkpoint

SLOTS = 48
STEPS = 24
WATCHED = 3          # the conversation whose output is compared
FAR = 40             # a neighbour beyond the first bucket: its frames make the step compute all 48 rows


@pytest.fixture(scope="module")
def checkpoint():
    torch.set_num_threads(1)
    return resolve_checkpoint("tiny:moshi")


def conversation(checkpoint, active_rows: bool, neighbours: list[int], settings: SamplingSettings):
    """Steps WATCHED for STEPS frames; `neighbours` speak during steps 8..15, one is forced silent,
    and slot 1 is reset at step 12. Returns WATCHED's (pcm, text) per step and the rows computed."""
    model = MoshiBatch(checkpoint, SLOTS, "cpu", torch.float32, active_rows=active_rows)
    model.warmup()
    model.configure_slot(WATCHED, settings)
    voice = np.random.default_rng(1).standard_normal((STEPS, 1920)).astype(np.float32) * 0.05
    noise = np.random.default_rng(2)
    out, rows = [], []
    for t in range(STEPS):
        pcm = noise.standard_normal((SLOTS, 1920)).astype(np.float32) * 0.05
        pcm[WATCHED] = voice[t]
        execute = np.zeros(SLOTS, dtype=bool)
        execute[WATCHED] = True
        if 8 <= t < 16:
            execute[neighbours] = True
        reset = np.zeros(SLOTS, dtype=bool)
        reset[1] = t == 12
        first = np.zeros(SLOTS, dtype=bool)
        first[WATCHED] = t == 0
        silent = np.zeros(SLOTS, dtype=bool)
        silent[neighbours[:1]] = True
        rows.append(model.rows_for(execute))
        result = model.step(StepInput(pcm, execute, reset, first, silent))
        assert not result.has_output[~execute].any(), "a slot without a frame gives no output"
        out.append((result.pcm[WATCHED].copy(), result.text[WATCHED]))
    return out, rows


@pytest.mark.parametrize("settings", [SamplingSettings(temperature=0.0, text_temperature=0.0),
                                      SamplingSettings(temperature=0.8, text_temperature=0.7, seed=5)],
                         ids=["greedy", "seeded"])
def test_the_active_prefix_gives_bit_identical_output(checkpoint, settings) -> None:
    full, full_rows = conversation(checkpoint, False, [1, 2, FAR], settings)
    prefix, prefix_rows = conversation(checkpoint, True, [1, 2, FAR], settings)
    alone, alone_rows = conversation(checkpoint, True, [1, 2], settings)
    assert set(full_rows) == {SLOTS}
    assert prefix_rows[0] == ROW_BUCKET and prefix_rows[8] == SLOTS and prefix_rows[16] == ROW_BUCKET
    assert set(alone_rows) == {ROW_BUCKET}
    assert sum(text is not None for _, text in full) > 0 and any(np.abs(pcm).max() > 0 for pcm, _ in full)
    for name, other in (("prefix", prefix), ("alone", alone)):
        for t, ((a_pcm, a_text), (b_pcm, b_text)) in enumerate(zip(full, other, strict=True)):
            assert np.array_equal(a_pcm, b_pcm) and a_text == b_text, f"{name}: step {t} differs"


def test_small_batches_and_cuda_compute_every_slot(checkpoint) -> None:
    assert MoshiBatch(checkpoint, ROW_BUCKET, "cpu", torch.float32).active_rows is None
    model = MoshiBatch(checkpoint, 40, "cpu", torch.float32)
    in_use = np.zeros(40, dtype=bool)
    assert model.rows_for(in_use) == 40                      # nothing in use: a wipe-only tick
    in_use[0] = True
    assert model.rows_for(in_use) == ROW_BUCKET
    in_use[ROW_BUCKET] = True
    assert model.rows_for(in_use) == 2 * ROW_BUCKET
    in_use[39] = True
    assert model.rows_for(in_use) == 40                      # capped at the batch
