"""Guided (classifier-free guidance) conversations in the batch give moshi's own LMGen tokens, frame by frame.

The tiny Hibiki in process, greedy: one conversation, each with its own `cfg_coef` and condition, run alone in
the batch and beside neighbours that join, reset and leave (one beyond the first row bucket, so the
computed rows change under it), gives exactly the tokens of moshi's `LMGen` at B = 1 with the same
`cfg_coef` and condition tensors built by `moshi.run_inference.get_condition_tensors` (its negatives included).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moshi.conditioners import ConditionAttributes
from moshi.models.lm import LMGen
from moshi.run_inference import get_condition_tensors

from duplex.models.inference import inference
from duplex.models.moshi_batch import MoshiBatch
from duplex.models.sampling import SamplingSettings
from duplex.models.spec import resolve_checkpoint

SLOTS = 32
SLOT = 3
FRAMES = 14
K = 16                     # Hibiki's codebooks per side
GREEDY = SamplingSettings(temperature=0.0, text_temperature=0.0)
CASES = [(1.0, None), (3.0, None), (1.5, "neutral"), (0.5, "very_bad")]


@pytest.fixture(scope="module")
def checkpoint():
    torch.set_num_threads(1)
    return resolve_checkpoint("tiny:hibiki")


@pytest.fixture(scope="module")
def model(checkpoint):
    model = MoshiBatch(checkpoint, SLOTS, "cpu", torch.float32)
    assert model.guidance is not None and model.agent_q == K and model.active_rows is not None
    model.warmup()
    for slot in range(SLOTS):
        model.configure_slot(slot, GREEDY)
    return model


def user_codes(seed: int) -> torch.Tensor:
    codes = torch.randint(0, 2048, (FRAMES, K), generator=torch.Generator().manual_seed(seed))
    codes[-2] = 2048       # Hibiki's end-of-input marker (moshi.run_inference), then more frames
    return codes


def lmgen_at_b1(checkpoint, coef: float, condition: str | None, user: torch.Tensor) -> list[torch.Tensor]:
    """The reference: moshi's LMGen, B = 1, a model of its own, conditions as moshi.run_inference builds them."""
    lm = checkpoint.get_moshi(device="cpu", dtype=torch.float32)
    if condition is None:
        tensors = get_condition_tensors("hibiki", lm, 1, coef)
    else:
        conditions = [ConditionAttributes(text={"description": condition}, tensor={})]
        if coef != 1.0:
            conditions.append(ConditionAttributes(text={"description": "very_bad"}, tensor={}))
        tensors = lm.condition_provider.prepare_and_provide(conditions)
    gen = LMGen(lm, use_sampling=False, cfg_coef=coef, condition_tensors=tensors, support_out_of_sync=True)
    gen.streaming_forever(1)
    with inference(torch.device("cpu")):
        return [gen.step(user[t][None, :, None])[0, :, 0].clone() for t in range(FRAMES)]


class Batch:
    """Steps the batch as the engine's ticks would, with scripted neighbours (slot -> first, last frame)."""

    def __init__(self, model: MoshiBatch, neighbours: dict[int, tuple[int, int]], resets: dict[int, int]):
        self.model, self.neighbours, self.resets = model, neighbours, resets
        self.rng = torch.Generator().manual_seed(5)
        self.rows_seen: set[int] = set()

    def step(self, t: int, frame: torch.Tensor | None) -> torch.Tensor:
        model = self.model
        execute = np.zeros(SLOTS, dtype=bool)
        for slot, (first, last) in self.neighbours.items():
            execute[slot] = first <= t <= last
        reset = np.zeros(SLOTS, dtype=bool)
        for slot, when in self.resets.items():
            reset[slot] = when == t
        if reset.any():
            model.gen.reset_streaming(torch.from_numpy(reset))
        codes = torch.randint(0, 2048, (SLOTS, K, 1), generator=self.rng)
        if frame is not None:
            execute[SLOT] = True
            codes[SLOT, :, 0] = frame
        model.gen.force_silence.zero_()
        rows = model.rows_for(execute)
        self.rows_seen.add(rows)
        with inference(model.device):
            if rows == SLOTS:
                model.gen.set_exec_mask(torch.from_numpy(execute))
                return model.gen.step(codes)
            with model.active_rows.narrowed(rows):
                model.gen.set_exec_mask(torch.from_numpy(execute[:rows]))
                return model.gen.step(codes[:rows])


def converse(model: MoshiBatch, batch: Batch, coef: float, condition: str | None, user: torch.Tensor) -> list[torch.Tensor]:
    model.reset_slot(SLOT)
    model.configure_slot(SLOT, GREEDY.updated({"cfg_coef": coef, "condition": condition}))
    return [batch.step(t, user[t])[SLOT, :, 0].clone() for t in range(FRAMES)]


def configure_neighbours(model: MoshiBatch) -> None:
    """Neighbours guided differently: their coefficients and conditions must not leak into slot 3."""
    for slot, (coef, condition) in {0: (4.0, "bad"), 1: (1.0, None), 6: (2.0, "good"), 20: (6.0, "very_bad")}.items():
        model.configure_slot(slot, GREEDY.updated({"cfg_coef": coef, "condition": condition}))


@pytest.mark.parametrize("coef,condition", CASES)
def test_guided_conversation_matches_lmgen_alone_and_with_neighbours(checkpoint, model, coef, condition) -> None:
    user = user_codes(int(coef * 10))
    reference = lmgen_at_b1(checkpoint, coef, condition, user)
    alone = converse(model, Batch(model, {}, {}), coef, condition, user)
    configure_neighbours(model)
    # 0 talks throughout and resets at 5; 1 leaves at 6; 6 joins at 4; 20 joins at 8 (all 32 rows from then)
    busy_batch = Batch(model, {0: (0, FRAMES), 1: (0, 6), 6: (4, FRAMES), 20: (8, FRAMES)}, {0: 5, 20: 8})
    for t in range(-3, 0):
        busy_batch.step(t, None)
    busy = converse(model, busy_batch, coef, condition, user)
    assert busy_batch.rows_seen == {16, 32}
    for label, tokens in (("alone", alone), ("with neighbours", busy)):
        for t, (want, got) in enumerate(zip(reference, tokens, strict=True)):
            assert torch.equal(want, got), f"cfg {coef} {condition}, {label}: frame {t}: {want.tolist()} != {got.tolist()}"


def test_the_guidance_and_the_condition_matter(model) -> None:
    """Not vacuous: another coefficient, or another condition, gives other tokens from the same input."""
    user = user_codes(1)
    batch = Batch(model, {}, {})
    plain = converse(model, batch, 1.0, None, user)
    guided = converse(model, batch, 3.0, None, user)
    conditioned = converse(model, batch, 1.0, "very_bad", user)
    assert not all(torch.equal(a, b) for a, b in zip(plain, guided))
    assert not all(torch.equal(a, b) for a, b in zip(plain, conditioned))


def test_unguided_serving_is_moshis_cfg_1_with_a_condition_per_slot(checkpoint) -> None:
    """`--guidance off`: one row per slot, each with its own condition, exactly LMGen at cfg_coef 1; the
    engine refuses another coefficient."""
    from duplex.engines.base import Unsupported
    from duplex.engines.duplex import DuplexEngine

    model = MoshiBatch(checkpoint, SLOTS, "cpu", torch.float32, guidance=False)
    assert model.guidance is not None and not model.guidance.doubled
    for slot in range(SLOTS):
        model.configure_slot(slot, GREEDY)
    model.configure_slot(0, GREEDY.updated({"condition": "bad"}))
    user = user_codes(2)
    batch = Batch(model, {0: (0, FRAMES), 20: (6, FRAMES)}, {0: 4})
    for condition in (None, "neutral"):
        reference = lmgen_at_b1(checkpoint, 1.0, condition, user)
        tokens = converse(model, batch, 1.0, condition, user)
        for t, (want, got) in enumerate(zip(reference, tokens, strict=True)):
            assert torch.equal(want, got), f"unguided {condition}: frame {t}: {want.tolist()} != {got.tolist()}"
    engine = DuplexEngine(model)
    assert engine.health()["guided"] is False
    engine.check_config({"cfg_coef": 1.0, "condition": "good"})
    with pytest.raises(Unsupported, match="--guidance off"):
        engine.check_config({"cfg_coef": 3.0})
