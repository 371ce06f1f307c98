"""Each tiny Moshi-family layout in the batch gives, frame by frame, what moshi's own LMGen gives at B = 1.

Greedy, in process, on the LM's codes (Mimi is the same module for all and is covered by the server tests):
a conversation alone in the batch, the same one beside neighbours that talk and sample throughout (one
beyond the first row bucket, so the step computes all 32 rows) while another joins, resets and leaves, and
moshi's `LMGen` (use_sampling=False, the checkpoint's condition tensors) on a model of its own at B = 1, for the
same user codes, agree on the text token and every codebook the model says. For Hibiki-Zero the layout
has grouped-query attention (kv_repeat 2: the KV cache has half the heads), 16 codebooks a side and
delays of 2; J-Moshi's is loaded from a directory without config.json. A seeded conversation samples
alike alone and beside the neighbours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moshi.models import LMGen
from moshi.run_inference import get_condition_tensors

from duplex.config import MAX_TOP_K
from duplex.models.grouped_attention import moshis_own
from duplex.models.inference import inference
from duplex.models.moshi_batch import MoshiBatch
from duplex.models.sampling import SamplingSettings
from duplex.models.spec import resolve_checkpoint

SLOTS = 32
NEIGHBOURS = [0, 1, 6, 20]     # talk throughout; 20 makes the busy steps compute all 32 rows
CHURNER = 3                    # joins, resets and leaves while the conversation runs
SLOT = 5
FRAMES = 14
GREEDY = SamplingSettings(temperature=0.0, text_temperature=0.0)


@pytest.fixture(scope="module", params=["hibiki-zero", "jmoshi", "moshi"])
def family(request):
    torch.set_num_threads(1)
    checkpoint = resolve_checkpoint(f"tiny:{request.param}")
    model = MoshiBatch(checkpoint, SLOTS, "cpu", torch.float32)
    model.warmup()
    for slot in range(SLOTS):
        model.configure_slot(slot, GREEDY)
    return request.param, checkpoint, model


def user_codes(model: MoshiBatch, seed: int, frames: int = FRAMES) -> torch.Tensor:
    user_q = model.lm.n_q - model.lm.dep_q
    return torch.randint(0, 2048, (frames, user_q), generator=torch.Generator().manual_seed(seed))


def said(tokens: torch.Tensor, dep_q: int) -> torch.Tensor | None:
    """[1 + n_q] tokens of a step -> text + the model's dep_q codebooks, None while within the delays."""
    out = tokens[: 1 + dep_q]
    return out.clone() if bool((out[1:] >= 0).all()) else None


def reference_at_b1(checkpoint, user: torch.Tensor) -> list[torch.Tensor]:
    lm = checkpoint.get_moshi(device="cpu", dtype=torch.float32)
    conditions = get_condition_tensors(checkpoint.model_type, lm, batch_size=1, cfg_coef=1.0)
    gen = LMGen(lm, use_sampling=False, condition_tensors=conditions)
    out = []
    with inference(torch.device("cpu")), gen.streaming(1), moshis_own():   # moshi's attention, not ours
        for t in range(user.shape[0]):
            tokens = gen.step(user[t][None, :, None])
            if tokens is not None:
                out.append(tokens[0, : 1 + lm.dep_q, 0].clone())
    return out


def step(model: MoshiBatch, talking: dict[int, torch.Tensor], rng: torch.Generator) -> torch.Tensor:
    """One engine-like tick: the slots in `talking` execute with their codes; the others are masked."""
    user_q = model.lm.n_q - model.lm.dep_q
    execute = np.zeros(SLOTS, dtype=bool)
    codes = torch.randint(0, 2048, (SLOTS, user_q, 1), generator=rng)
    for slot, frame in talking.items():
        execute[slot] = True
        codes[slot, :, 0] = frame
    model.gen.force_silence.zero_()
    model.gen.noise.copy_(model.draw_sampling([s for s in talking if model._samples(s)]))   # as MoshiBatch does
    rows = model.rows_for(execute)
    with inference(model.device):
        if model.active_rows is None or rows == SLOTS:
            model.gen.set_exec_mask(torch.from_numpy(execute))
            return model.gen.step(codes)[:, :, 0]
        with model.active_rows.narrowed(rows):
            model.gen.set_exec_mask(torch.from_numpy(execute[:rows]))
            return model.gen.step(codes[:rows])[:, :, 0]


def converse(model: MoshiBatch, user: torch.Tensor, busy: bool,
             settings: SamplingSettings = GREEDY) -> list[torch.Tensor]:
    rng = torch.Generator().manual_seed(11)
    noise = user_codes(model, 99, 4 * FRAMES)
    for slot in range(SLOTS):
        model.reset_slot(slot)
        model.configure_slot(slot, GREEDY if slot != SLOT else settings)
    for n in NEIGHBOURS + [CHURNER]:      # neighbours sample, each from its own seed
        # wider top-k than ours: a busy step ranks more logits than ours alone does (sample_per_slot `width`)
        model.configure_slot(n, SamplingSettings(temperature=0.9, text_temperature=0.8, seed=n, top_k=MAX_TOP_K,
                                                 text_top_k=MAX_TOP_K))
    if busy:   # neighbours mid-conversation before ours starts
        for t in range(3):
            step(model, {n: noise[t] for n in NEIGHBOURS}, rng)
    out = []
    for t in range(FRAMES):
        talking = {n: noise[t + 5 * i] for i, n in enumerate(NEIGHBOURS)} if busy else {}
        if busy and t == 4:
            model.reset_slot(CHURNER)       # joins
        if busy and t == 8:
            model.reset_slot(CHURNER)       # resets mid-conversation
        if busy and 4 <= t < 11:            # ... and leaves at 11
            talking[CHURNER] = noise[t + 30]
        talking[SLOT] = user[t]
        tokens = step(model, talking, rng)
        piece = said(tokens[SLOT], model.lm.dep_q)
        if piece is not None:
            out.append(piece)
    return out


def test_alone_busy_and_moshi_lmgen_at_b1_agree_frame_by_frame(family):
    name, checkpoint, model = family
    user = user_codes(model, 5)
    reference = reference_at_b1(checkpoint, user)
    assert len(reference) == FRAMES - max(model.lm.delays), name
    alone = converse(model, user, busy=False)
    busy = converse(model, user, busy=True)
    assert len(alone) == len(busy) == len(reference)
    for k, (a, b, r) in enumerate(zip(alone, busy, reference)):
        assert torch.equal(a, r), f"{name}: alone differs from LMGen at B=1 at frame {k}"
        assert torch.equal(b, r), f"{name}: beside neighbours differs from LMGen at B=1 at frame {k}"
    # the model really speaks: its audio codebooks vary over the frames
    assert len({tuple(r[1:].tolist()) for r in reference}) > 1


def test_a_seeded_conversation_samples_alike_alone_and_beside_neighbours(family):
    """Per-slot sampling over the layout's codebooks (17 streams for Hibiki-Zero): a seed gives the same
    samples whatever the neighbours do, and other samples than greedy."""
    name, _, model = family
    user = user_codes(model, 6)
    seeded = SamplingSettings(temperature=0.8, text_temperature=0.7, seed=1234)
    alone = converse(model, user, busy=False, settings=seeded)
    busy = converse(model, user, busy=True, settings=seeded)
    greedy = converse(model, user, busy=False)
    assert len(alone) == len(busy) == len(greedy) > 0
    assert all(torch.equal(a, b) for a, b in zip(alone, busy)), name
    assert any(not torch.equal(a, g) for a, g in zip(alone, greedy)), name


def test_hibiki_zero_layout_is_what_moshi_builds():
    """The tiny Hibiki-Zero has the real one's distinctive structure once moshi has loaded it."""
    checkpoint = resolve_checkpoint("tiny:hibiki-zero")
    lm = checkpoint.get_moshi(device="cpu", dtype=torch.float32)
    attention = lm.transformer.layers[0].self_attn
    assert checkpoint.model_type == "hibiki" and (lm.n_q, lm.dep_q) == (32, 16)
    assert attention.kv_repeat == 2 and lm.depformer.layers[0].self_attn.kv_repeat == 1
    # grouped-query: the fused projection gives dim queries + 2 x dim / kv_repeat keys and values
    assert attention.in_projs[0].weight.shape[0] == lm.dim + 2 * lm.dim // 2
    assert lm.transformer.rope is not None and not lm.transformer.rope.interleave    # rope_concat
    assert len(lm.depformer_in) == 9 and max(lm.delays) == 2
    assert all(isinstance(norm, torch.nn.LayerNorm) for norm in lm.depformer_norms)
    assert checkpoint.get_mimi().num_codebooks == 16


def test_jmoshi_directory_has_no_config_and_loads_as_moshi_does(tmp_path):
    from duplex.models.spec import model_directory

    directory = model_directory("tiny:jmoshi")
    assert directory is not None and not (directory / "config.json").exists()
    checkpoint = resolve_checkpoint(str(directory))
    assert checkpoint.model_type == "moshi" and checkpoint.raw_config is None
    assert checkpoint.tokenizer.name == "tokenizer_spm_32k_3.model"
    assert checkpoint.mimi_weights.name == "tokenizer-e351c8d8-checkpoint125.safetensors"
    # without the tiny sizes, the same files are read with moshi's 7B constants (lm_config None), as
    # moshi reads J-Moshi's repo; the shapes then do not fit the tiny weights
    copy = tmp_path / "jmoshi"
    copy.mkdir()
    for name in ("model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors", "tokenizer_spm_32k_3.model"):
        (copy / name).symlink_to(directory / name)
    bare = resolve_checkpoint(str(copy))
    assert bare.lm_config is None and bare.mimi_config is None and bare.model_type == "moshi"
    # PersonaPlex's files have the same three names: without config.json and voices.tgz its folder is still
    # PersonaPlex's (its depformer predicts 16 codebooks), not a Moshi 7B
    persona = model_directory("tiny:personaplex")
    assert persona is not None
    other = tmp_path / "personaplex"
    other.mkdir()
    for name in ("model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors", "tokenizer_spm_32k_3.model"):
        (other / name).symlink_to(persona / name)
    assert resolve_checkpoint(str(other)).lm_config["dep_q"] == 16
