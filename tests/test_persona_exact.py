"""Persona prompts go into a slot in parallel passes (or from the prefix cache) and change nothing.

The tiny PersonaPlex in process, greedy: a conversation whose persona was prefilled in chunks between
its neighbours' steps, one started from the prefix cache, and one whose prompt was stepped one frame per
batched step (PersonaPlex's way) all give the very tokens of the same prompt stepped one frame at a
time through moshi's LMGen (PersonaLMGen) at B = 1, for several prompt lengths, with neighbours
mid-conversation around them (one of them beyond the first row bucket, so steps compute all the rows),
and whatever forced silence the slot's last tick left (an interrupt, then a reset within the hold).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duplex.models.inference import inference
from duplex.models.moshi_batch import MoshiBatch
from duplex.models.persona import PersonaPrompt, build_prompt
from duplex.models.persona_gen import PersonaLMGen
from duplex.models.prefill import MIN_CHUNK
from duplex.models.sampling import SamplingSettings
from duplex.models.spec import resolve_checkpoint

SLOTS = 32
NEIGHBOURS = [0, 1, 6, 20]     # mid-conversation throughout; 20 makes steps compute all 32 rows
FRAMES = 12                    # conversation frames compared after the prompt
GREEDY = SamplingSettings(temperature=0.0, text_temperature=0.0)


@pytest.fixture(scope="module")
def checkpoint():
    torch.set_num_threads(1)
    return resolve_checkpoint("tiny:personaplex")


@pytest.fixture(scope="module")
def model(checkpoint):
    model = MoshiBatch(checkpoint, SLOTS, "cpu", torch.float32)
    model.warmup()
    for slot in range(SLOTS):
        model.configure_slot(slot, GREEDY)
    return model


def prompts() -> dict[str, PersonaPrompt]:
    g = torch.Generator().manual_seed(7)
    voice = torch.randint(0, 2048, (8, 45), generator=g)
    return {
        "text only": build_prompt(None, [11, 5, 40], ""),                      # 15 frames: one pass
        "short voice": build_prompt(voice[:, :7], [5, 17, 30, 44, 9], "a"),    # 24 frames
        "long voice": build_prompt(voice, list(range(4, 30)), "b"),            # 83 frames: several passes
    }


def user_codes(seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (FRAMES, 8), generator=torch.Generator().manual_seed(seed))


def stepped_at_b1(checkpoint, silence: torch.Tensor, prompt: PersonaPrompt, user: torch.Tensor) -> list[torch.Tensor]:
    """The reference: a model of its own, B = 1, every prompt frame a forced LMGen step, then the user."""
    lm = checkpoint.get_moshi(device="cpu", dtype=torch.float32)
    gen = PersonaLMGen(lm, 1, silence)
    gen.streaming_forever(1)
    out = []
    with inference(torch.device("cpu")):
        for p in range(prompt.frames):
            gen.forced[0] = True
            gen.forced_tokens[0] = prompt.frame(p)[:9]
            gen.step(prompt.user[p][None, :, None])
        gen.forced[0] = False
        for t in range(FRAMES):
            tokens = gen.step(user[t][None, :, None])
            out.append(tokens[0, :9, 0].clone())      # text + the model's 8 codebooks
    return out


class Neighbours:
    """Steps the batch as the engine's ticks would: the neighbours always, plus the slots in `talking`."""

    def __init__(self, model: MoshiBatch):
        self.model = model
        self.rng = torch.Generator().manual_seed(3)

    def step(self, talking: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        model = self.model
        execute = np.zeros(SLOTS, dtype=bool)
        execute[NEIGHBOURS] = True
        codes = torch.randint(0, 2048, (SLOTS, 8, 1), generator=self.rng)
        for slot, frame in (talking or {}).items():
            execute[slot] = True
            codes[slot, :, 0] = frame
        model.gen.force_silence.zero_()
        rows = model.rows_for(execute)
        with inference(model.device):
            if model.active_rows is None or rows == SLOTS:
                model.gen.set_exec_mask(torch.from_numpy(execute))
                return model.gen.step(codes)
            with model.active_rows.narrowed(rows):
                model.gen.set_exec_mask(torch.from_numpy(execute[:rows]))
                return model.gen.step(codes[:rows])


def converse(model: MoshiBatch, neighbours: Neighbours, slot: int, user: torch.Tensor) -> list[torch.Tensor]:
    return [neighbours.step({slot: user[t]})[slot, :9, 0].clone() for t in range(FRAMES)]


@pytest.mark.parametrize("name", list(prompts()))
def test_prefilled_cached_and_stepped_prompts_match_lmgen_stepped_at_b1(checkpoint, model, name) -> None:
    prompt = prompts()[name]
    user = user_codes(len(name))
    reference = stepped_at_b1(checkpoint, model.silence_codes, prompt, user)
    neighbours = Neighbours(model)
    for _ in range(3):
        neighbours.step()

    # parallel: chunks of MIN_CHUNK positions, a neighbours' step between chunks. Each slot starts forced
    # silent, as the last tick leaves a conversation interrupted and then reset within the hold: the
    # prompt's first column is the persona's, never silenced.
    model.gen.force_silence[[3, 9, 12]] = True
    prefill = model.begin_prefill(3, prompt)
    while not model.run_prefill(prefill, 0.0):
        neighbours.step()
    assert not prefill.cached and prefill.passes == max(1, prompt.frames // MIN_CHUNK)
    parallel = converse(model, neighbours, 3, user)

    # cached: the same persona in another slot, while slot 3 goes on talking
    model.gen.force_silence[9] = True
    cached_prefill = model.begin_prefill(9, prompt)
    assert model.run_prefill(cached_prefill, 0.0) and cached_prefill.cached and cached_prefill.passes == 0
    cached = converse(model, neighbours, 9, user)

    ways = [("parallel", parallel), ("cached", cached)]
    if name == "short voice":   # stepped: PersonaPlex's way, one batched step per prompt frame (slow: once)
        model.step_prompt(12, prompt)
        ways.append(("stepped", converse(model, neighbours, 12, user)))

    for label, tokens in ways:
        for t, (want, got) in enumerate(zip(reference, tokens, strict=True)):
            assert torch.equal(want, got), f"{name}, {label}: frame {t} differs: {want.tolist()} != {got.tolist()}"


def test_the_prompt_matters(checkpoint, model) -> None:
    """Not vacuous: another role prompt, or none, gives other tokens from the same user audio."""
    user = user_codes(1)
    silence = model.silence_codes
    one = stepped_at_b1(checkpoint, silence, build_prompt(None, [11, 5, 40], ""), user)
    other = stepped_at_b1(checkpoint, silence, build_prompt(None, [12, 5, 40], ""), user)
    assert any(not torch.equal(a, b) for a, b in zip(one, other, strict=True))
    assert len({tuple(t.tolist()) for t in one}) > FRAMES // 2, "the model's output varies over the frames"
    assert model.begin_prefill(0, build_prompt(None, [11, 5, 40], "")).prompt.key != \
        build_prompt(None, [12, 5, 40], "").key, "a different role prompt is a different cache entry"


def test_the_prefix_cache_is_bounded(model) -> None:
    from duplex.models.prefill import PrefixCache

    g = prompts()
    entry_bytes = []
    cache = model.prefix_cache
    for prompt in g.values():
        prefill = model.begin_prefill(30, prompt)
        while not model.run_prefill(prefill, 1.0):
            pass
        entry = cache.get(prompt.key)
        assert entry is not None and entry.frames == prompt.frames
        entry_bytes.append(entry.nbytes)
    small = PrefixCache(max_bytes=entry_bytes[1] + entry_bytes[2])
    for prompt in g.values():
        small.put(prompt.key, cache.get(prompt.key))   # type: ignore[arg-type]
    keys = list(g.values())
    assert small.bytes <= small.max_bytes
    assert small.get(keys[0].key) is None, "the least recently used entry went first"
    assert small.get(keys[2].key) is not None


def test_a_pt_voice_gives_what_its_wav_gives(model, tmp_path) -> None:
    """PersonaPlex's precomputed `.pt` voices (input embeddings + token cache) go in as their WAV would."""
    from duplex.audio import write_wav
    from duplex.models.persona import VoiceLibrary
    from duplex.models.tiny.personaplex import synthetic_voice
    from duplex.models.voice_embeddings import write_voice

    write_wav(str(tmp_path / "ALICE.wav"), synthetic_voice(200.0, 2.0, 1))
    _, codes = VoiceLibrary(tmp_path, model.encode_voice).codes("ALICE")
    write_voice(tmp_path / "BOB.pt", model.lm, codes)
    voices = VoiceLibrary(tmp_path, model.encode_voice)
    wav = model.persona_prompt(voices, "ALICE.wav", "Be kind.")
    pt = model.persona_prompt(voices, "BOB.pt", "Be kind.")
    assert pt.embeddings is not None and pt.frames == wav.frames and pt.key != wav.key
    user = user_codes(5)
    neighbours = Neighbours(model)
    got = {}
    for slot, prompt in ((3, wav), (9, pt)):
        prefill = model.begin_prefill(slot, prompt, use_cache=False)
        while not model.run_prefill(prefill, 0.0):
            neighbours.step()
        got[slot] = converse(model, neighbours, slot, user)
    for t, (a, b) in enumerate(zip(got[3], got[9], strict=True)):
        assert torch.equal(a, b), f"frame {t}: {a.tolist()} != {b.tolist()}"
