"""A duplex conversation's persona: its prompt put into the slot before the first frame, between ticks.

`PersonaWork` is the scheduler's `BetweenTicks` work for one slot: the first piece builds the prompt (the
voice's Mimi codes are cached by the voice library), then the prompt goes in by one of three ways:

- `parallel` (default): chunks of prompt positions through the main transformer (models/prefill.py),
  each sized to the room before the next tick, from the prefix cache when the same persona was seen;
- `nocache`: the same without the cache (benchmarks);
- `stepped`: PersonaPlex's way, one model step per prompt frame, all of them in one piece, during which
  nobody else is served (the benchmark's baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.moshi_batch import MoshiBatch
from ..models.persona import PersonaPrompt, VoiceLibrary
from ..models.prefill import MIN_CHUNK, Prefill

PREFILL_MODES = ("parallel", "nocache", "stepped")


@dataclass(frozen=True)
class Persona:
    """What a conversation asked for: a voice name from the voices folder, a role prompt."""
    voice: str | None
    text: str | None

    @classmethod
    def from_config(cls, config: dict) -> "Persona | None":
        voice, text = config.get("voice"), config.get("system_prompt")
        if voice is None and not (text and text.strip()):
            return None
        return cls(voice, text)


class PersonaWork:
    """Puts a persona's prompt into `slot`, a piece per `run` (model thread)."""

    def __init__(self, model: MoshiBatch, voices: VoiceLibrary | None, persona: Persona, slot: int, mode: str):
        assert mode in PREFILL_MODES, mode
        self.model = model
        self.voices = voices
        self.persona = persona
        self.slot = slot
        self.mode = mode
        self.prompt: PersonaPrompt | None = None
        self.prefill: Prefill | None = None
        self.cached = False

    def min_cost_s(self) -> float:
        if self.prompt is None or self.mode == "stepped":
            return 0.0    # the first piece: the prompt, then the cache or a first chunk; stepped ignores budgets
        return MIN_CHUNK * self.model.seconds_per_position

    def run(self, budget_s: float) -> bool:
        model = self.model
        if self.prompt is None:   # cheap once the voice is encoded (the library keeps its codes): go on
            self.prompt = model.persona_prompt(self.voices, self.persona.voice, self.persona.text)
            if self.mode != "stepped":
                self.prefill = model.begin_prefill(self.slot, self.prompt, use_cache=self.mode == "parallel")
        if self.mode == "stepped":
            model.step_prompt(self.slot, self.prompt)
            return True
        assert self.prefill is not None
        done = model.run_prefill(self.prefill, budget_s)
        self.cached = self.prefill.cached
        return done
