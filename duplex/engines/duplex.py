"""The duplex engine: Moshi conversations, each in a slot of one batched model.

DuplexStream is one conversation: it queues user frames into its slot, turns step results into
typed frames for its session, detects assistant turns from the audio it speaks, and implements
`interrupt` by forcing its slot silent (the model is fed silence codes as its own speech, so its
state agrees with what the user hears). A model with persona support (PersonaPlex) takes the config's
`system_prompt` and `voice` as its persona, put into the slot before the first frame (engines/persona.py).
A guided model (Hibiki) takes `cfg_coef` and `condition`, at `start` or any time later (models/guidance.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing as tp

import numpy as np

from ..audio import FRAME_MS, FRAME_SAMPLES, rms_dbfs
from ..config import DUPLEX_CONFIG_KEYS
from ..models.guidance import GuidanceError
from ..models.moshi_batch import MoshiBatch, StepInput, StepOutput
from ..models.persona import PersonaError, VoiceLibrary
from .base import (AssistantAudio, AssistantText, AssistantTurnEnded, AssistantTurnStarted, BadChoice,
                   CapacityError, ConfigOffer, Engine, EngineFailure, EngineStream, Sink, StreamReady, Unsupported,
                   UserFrame)
from .persona import Persona, PersonaWork
from .scheduler import BatchScheduler, Delivery, Slot, TickEntry
from .transcriber import TranscriberSource, UserTranscriber
from .turns import ActivityDetector

log = logging.getLogger(__name__)


class DuplexSlotOwner(tp.Protocol):
    """Who holds a Moshi slot (a DuplexStream): read before each step, told each step's result."""

    forced_silent: bool   # the slot's assistant is held silent (interrupt)
    sink: Sink            # where its conversation's events go

    def on_step(self, pcm: np.ndarray, text: str | None, has_output: bool, turnaround_ms: float,
                heard: np.ndarray) -> None: ...


class DuplexRunner:
    """Adapts MoshiBatch to the scheduler (a `TickRunner`): builds the masked batch, runs it, hands results out."""

    def __init__(self, model: MoshiBatch):
        self.model = model

    def prepare(self, entries: list[TickEntry[DuplexSlotOwner]]) -> StepInput:
        slots = self.model.slots
        batch = StepInput(
            pcm=np.zeros((slots, FRAME_SAMPLES), dtype=np.float32),
            execute=np.zeros(slots, dtype=bool), reset=np.zeros(slots, dtype=bool),
            first=np.zeros(slots, dtype=bool), force_silence=np.zeros(slots, dtype=bool),
        )
        for entry in entries:
            i = entry.slot.index
            batch.reset[i] = entry.reset
            if entry.frame is not None:
                batch.pcm[i] = entry.frame.pcm
                batch.execute[i] = True
                batch.first[i] = entry.first
                owner = entry.slot.owner
                batch.force_silence[i] = bool(owner is not None and owner.forced_silent)
        return batch

    def execute(self, batch: StepInput) -> StepOutput:
        return self.model.step(batch)

    def fail(self, deliveries: list[Delivery[DuplexSlotOwner]], error: Exception) -> None:
        for d in deliveries:
            d.owner.sink(EngineFailure("internal", "the model step that had this frame failed; its answer is lost"))

    def deliver(self, deliveries: list[Delivery[DuplexSlotOwner]], result: StepOutput) -> None:
        now = time.monotonic()
        for d in deliveries:
            d.owner.on_step(result.pcm[d.index], result.text[d.index], bool(result.has_output[d.index]),
                            (now - d.frame.arrived) * 1000.0, d.frame.pcm)


class DuplexEngine(Engine):
    name = "duplex"

    def __init__(self, model: MoshiBatch, *, max_wait_ms: float | None = None, max_queue_frames: int = 125,
                 interrupt_hold_ms: float = 2000.0, speech_threshold_dbfs: float = -45.0,
                 transcribers: TranscriberSource | None = None, voices: VoiceLibrary | None = None,
                 prefill: str = "parallel"):
        """`voices`: the voice prompts of a persona model (--voices); `prefill`: how a persona goes in
        (engines/persona.py: parallel, nocache, stepped)."""
        self.model = model
        self.voices = voices
        self.prefill_mode = prefill
        self.personas_started = 0
        self.personas_cached = 0
        self._persona_tasks: set[asyncio.Task] = set()
        self.scheduler: BatchScheduler[DuplexSlotOwner] = BatchScheduler(
            DuplexRunner(model), model.slots, max_wait_ms=max_wait_ms, max_queue_frames=max_queue_frames, name="duplex")
        self.interrupt_hold_frames = max(1, round(interrupt_hold_ms / FRAME_MS))
        self.speech_threshold_dbfs = speech_threshold_dbfs
        # A speech recogniser (the cascade's), when one is loaded: makes `transcribe_user` available.
        self.transcribers = transcribers

    async def start(self) -> None:
        await self.scheduler.start()

    async def stop(self) -> None:
        for task in list(self._persona_tasks):
            task.cancel()
        await asyncio.gather(*self._persona_tasks, return_exceptions=True)
        await self.scheduler.stop()

    def has_free_slot(self) -> bool:
        return self.scheduler.has_free_slot()

    def health(self) -> dict:
        health: dict[str, tp.Any] = {"slots": self.model.slots, "active": self.scheduler.active,
                  "ticks": self.scheduler.ticks, "last_step_ms": round(self.scheduler.last_step_ms, 2),
                  "hold_ms": round(self.scheduler.policy.hold_s() * 1000.0, 1), "persona": self.model.persona,
                  "guided": self.model.guidance is not None and self.model.guidance.doubled}
        if self.model.persona:
            cache = self.model.prefix_cache
            health["voices"] = self.voices.names() if self.voices is not None else []
            health["prefix_cache"] = {"entries": len(cache), "bytes": cache.bytes, "hits": cache.hits,
                                      "misses": cache.misses}
        return health

    def config_offer(self) -> ConfigOffer:
        """A persona model takes `system_prompt` and `voice` at `start` only; `transcribe_user` needs the cascade's
        recogniser; the sampling keys are taken at any time."""
        keys = set(DUPLEX_CONFIG_KEYS)
        if not self.model.persona:
            keys -= {"system_prompt", "voice"}
        if self.transcribers is None:
            keys.discard("transcribe_user")
        voices = tuple(self.voices.names()) if self.model.persona and self.voices is not None else ()
        return ConfigOffer(frozenset(keys), frozenset(keys - {"system_prompt", "voice"}), voices)

    def open(self, config: dict, sink: Sink) -> "DuplexStream":
        self.check_config(config)
        stream = DuplexStream(self, sink)
        slot = self.scheduler.acquire(stream)
        if slot is None:
            raise CapacityError(f"all {self.model.slots} duplex slots are busy")
        stream.slot = slot
        try:
            stream.apply_settings(config, fresh=True)
        except Unsupported:
            stream.close()
            raise
        persona = Persona.from_config(config) if self.model.persona else None
        if persona is not None:
            stream.start_persona(persona)
        return stream

    def run_persona(self, stream: "DuplexStream", persona: Persona) -> None:
        """Puts `persona` into the stream's slot between ticks; the slot's frames wait meanwhile."""
        slot = stream.slot
        assert slot is not None
        self.scheduler.begin_preparing(slot)
        work = PersonaWork(self.model, self.voices, persona, slot.index, self.prefill_mode)
        task = asyncio.get_running_loop().create_task(self._prepare(stream, slot, work), name="persona-prefill")
        self._persona_tasks.add(task)
        task.add_done_callback(self._persona_tasks.discard)
        stream.preparation = task

    async def _prepare(self, stream: "DuplexStream", slot: Slot[DuplexSlotOwner], work: PersonaWork) -> None:
        self.personas_started += 1
        try:
            await self.scheduler.run_between_ticks(work)
        except PersonaError as exc:
            stream.sink(EngineFailure("unsupported", f"persona: {exc}; the conversation goes on without it"))
            slot.needs_reset = True        # the slot may be half filled: wipe it, keep the user's frames
        except Exception:
            log.exception("persona prefill failed")
            stream.sink(EngineFailure("internal", "persona prefill failed; the conversation goes on without it"))
            slot.needs_reset = True
        if slot.owner is not stream:
            return       # closed meanwhile
        self.personas_cached += work.cached
        self.scheduler.end_preparing(slot)
        stream.preparation = None
        stream.sink(StreamReady())

    def check_config(self, config: dict) -> None:
        unsupported = sorted(set(config) - DUPLEX_CONFIG_KEYS)
        if unsupported:
            raise Unsupported(f"the duplex model does not take {', '.join(unsupported)}", unsupported[0])
        persona = sorted({"system_prompt", "voice"} & set(config))
        if persona and not self.model.persona:
            raise Unsupported(f"this duplex model has no persona support ({', '.join(persona)}); a PersonaPlex "
                              "model has (--preset personaplex), and the cascade takes them (mode=cascade)", persona[0])
        guided = sorted({"cfg_coef", "condition"} & set(config))
        guidance = self.model.guidance
        if guided and guidance is None:
            raise Unsupported(f"this duplex model takes no guidance ({', '.join(guided)}); a guided model does "
                              "(--preset hibiki)", guided[0])
        if guidance is not None and not guidance.doubled and config.get("cfg_coef", 1.0) != 1.0:
            raise Unsupported("cfg_coef: this server runs its guided model unguided (--guidance off): 1 only", "cfg_coef")
        if guidance is not None and config.get("condition") is not None:
            try:
                guidance.check(config["condition"])
            except GuidanceError as exc:
                raise BadChoice(str(exc), "condition") from None   # a value outside the model's list: bad_message
        if "voice" in config:
            if self.voices is None:
                raise Unsupported("voice: this server has no voices folder (start it with --voices DIR)", "voice")
            try:
                self.voices.path(config["voice"])
            except PersonaError as exc:
                raise BadChoice(f"voice: {exc}", "voice") from None   # a value outside the server's list: bad_message
        if config.get("transcribe_user") and self.transcribers is None:
            raise Unsupported("transcribe_user needs a speech recogniser, and this server loaded none "
                              "(start it without --no-cascade)", "transcribe_user")


class DuplexStream(EngineStream):
    def __init__(self, engine: DuplexEngine, sink: Sink):
        self.engine = engine
        self.sink = sink
        self.slot: Slot[DuplexSlotOwner] | None = None
        self.settings = engine.model.defaults
        self.speaking = ActivityDetector(engine.speech_threshold_dbfs, hangover_frames=5)
        self.user_voice = ActivityDetector(engine.speech_threshold_dbfs, hangover_frames=5)
        self.forced_silent = False
        self._hold_left = 0          # frames left of an interrupt's forced silence
        self.transcriber: UserTranscriber | None = None   # while `transcribe_user` is on
        self.persona: Persona | None = None
        self.preparation: asyncio.Task | None = None      # while the persona goes into the slot

    @property
    def ready(self) -> bool:
        return self.preparation is None

    def start_persona(self, persona: Persona) -> None:
        self.persona = persona
        self.engine.run_persona(self, persona)

    @property
    def mode(self) -> str:
        return "duplex"

    @property
    def frames_dropped(self) -> int:
        return self.slot.dropped if self.slot is not None else 0

    # --- session -> engine -------------------------------------------------------------------
    def push_audio(self, frame: UserFrame) -> None:
        assert self.slot is not None
        self.engine.scheduler.push(self.slot, frame.pcm)
        self.user_voice.update(frame.level_dbfs)
        if self.transcriber is not None:
            self.transcriber.push(frame)

    def interrupt(self) -> None:
        self.forced_silent = True
        self._hold_left = self.engine.interrupt_hold_frames
        if self.speaking.active:
            self.speaking.reset()
            self.sink(AssistantTurnEnded(interrupted=True))

    def reset(self) -> None:
        assert self.slot is not None
        if self.preparation is not None:
            self.preparation.cancel()
            self.preparation = None
        self.engine.scheduler.reset(self.slot)
        if self.persona is not None:       # the persona is part of the conversation's start: put it back
            self.engine.scheduler.end_preparing(self.slot)
            self.start_persona(self.persona)
        self.forced_silent = False
        self.speaking.reset()
        self.user_voice.reset()
        if self.transcriber is not None:
            self.transcriber.reset()

    def configure(self, config: dict) -> None:
        self.engine.check_config(config)
        persona = sorted({"system_prompt", "voice"} & set(config))
        if persona:
            raise Unsupported("the duplex persona (system_prompt, voice) is set at `start` only", persona[0])
        self.apply_settings(config)

    def apply_settings(self, config: dict, fresh: bool = False) -> None:
        """`fresh`: a new conversation; its slot is set even to the defaults (the slot's last conversation
        may have set other values: its temperature or guidance must not carry over)."""
        if "transcribe_user" in config:
            self._set_transcription(bool(config["transcribe_user"]))
        settings = self.settings.updated(config)
        if fresh or settings != self.settings or "seed" in config:
            self.settings = settings
            slot = self.slot
            assert slot is not None
            # On the model thread, in order with the ticks: never mid-step.
            self.engine.scheduler.call_in_worker(self.engine.model.configure_slot, slot.index, settings)

    def _set_transcription(self, on: bool) -> None:
        transcribers = self.engine.transcribers
        if on and self.transcriber is None and transcribers is not None:
            try:
                self.transcriber = transcribers.transcriber(self.sink)
            except CapacityError as exc:
                raise Unsupported(f"transcribe_user: {exc}", "transcribe_user") from None
        elif not on and self.transcriber is not None:
            self.transcriber.close()
            self.transcriber = None

    def close(self) -> None:
        if self.preparation is not None:
            self.preparation.cancel()
            self.preparation = None
        if self.transcriber is not None:
            self.transcriber.close()
            self.transcriber = None
        if self.slot is not None:
            self.engine.scheduler.release(self.slot)
            self.slot = None

    # --- engine -> session (event loop, once per consumed frame) ------------------------------
    def on_step(self, pcm: np.ndarray, text: str | None, has_output: bool, turnaround_ms: float,
                heard: np.ndarray) -> None:
        if self.forced_silent:
            pcm = np.zeros_like(pcm)
            text = None
            self._count_down_hold()
        change = self.speaking.update(rms_dbfs(pcm)) if has_output else None
        if change == "start":
            self.sink(AssistantTurnStarted())
        if text:
            self.sink(AssistantText(text))
        self.sink(AssistantAudio(pcm, turnaround_ms, heard))
        if change == "end":
            self.sink(AssistantTurnEnded())

    def _count_down_hold(self) -> None:
        """Forced silence lasts the hold time, and longer while the user is still speaking."""
        self._hold_left -= 1
        if self._hold_left <= 0 and not self.user_voice.active:
            self.forced_silent = False
