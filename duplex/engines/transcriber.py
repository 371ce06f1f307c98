"""A conversation's user side: its audio through a speech-recogniser slot and an end-of-turn detector.

Emits user `UserTranscript` frames (partial while the user speaks, final once the STT has heard past
the end of the turn) and tells its owner when the user starts speaking and when a turn is complete.
The cascade answers those turns; a duplex conversation with `transcribe_user` only shows them.
"""

from __future__ import annotations

import math
import time
import typing as tp

import numpy as np

from ..audio import FRAME_MS, FRAME_SAMPLES
from ..models.stt import SttModel, SttStepInput, SttStepOutput
from .base import CapacityError, EngineFailure, Sink, UserFrame, UserTranscript
from .scheduler import BatchScheduler, Delivery, TickEntry
from .turns import EndOfTurnDetector


class SttSlotOwner(tp.Protocol):
    """Who holds a speech-recogniser slot: told, once per frame the STT consumed, what it wrote."""

    def on_stt(self, text: str | None, pause_prob: float) -> None: ...

    def on_stt_failed(self, error: Exception) -> None:
        """The step that had this slot's frame failed: the frame was not heard (it is counted as dropped)."""
        ...


class SttRunner:
    """Adapts the STT (`SttModel`) to the scheduler (a `TickRunner`), as DuplexRunner does for Moshi."""

    def __init__(self, model: SttModel):
        self.model = model

    def prepare(self, entries: list[TickEntry[SttSlotOwner]]) -> SttStepInput:
        slots = self.model.slots
        batch = SttStepInput(np.zeros((slots, FRAME_SAMPLES), dtype=np.float32),
                             np.zeros(slots, dtype=bool), np.zeros(slots, dtype=bool))
        for entry in entries:
            batch.reset[entry.slot.index] = entry.reset
            if entry.frame is not None:
                batch.pcm[entry.slot.index] = entry.frame.pcm
                batch.execute[entry.slot.index] = True
        return batch

    def execute(self, batch: SttStepInput) -> SttStepOutput:
        return self.model.step(batch)

    def deliver(self, deliveries: list[Delivery[SttSlotOwner]], result: SttStepOutput) -> None:
        for d in deliveries:
            d.owner.on_stt(result.text[d.index], float(result.pause_prob[d.index]))

    def fail(self, deliveries: list[Delivery[SttSlotOwner]], error: Exception) -> None:
        for d in deliveries:
            d.owner.on_stt_failed(error)


class TranscriberSource(tp.Protocol):
    """Where a conversation gets its user side (the cascade engine lends its STT slots to duplex)."""

    def transcriber(self, sink: Sink, **callbacks: tp.Any) -> "UserTranscriber":
        """A user side on a free STT slot; raises CapacityError when every slot is taken."""
        ...


class UserTranscriber:
    """One conversation's user side; holds one STT slot (an `SttSlotOwner`) until `close()`."""

    def __init__(self, scheduler: BatchScheduler[SttSlotOwner], sink: Sink, turn_options: dict, flush_frames: int,
                 on_speech_start: tp.Callable[[], None] = lambda: None,
                 on_turn: tp.Callable[[str], None] = lambda text: None, flush: bool = True,
                 on_barge_in: tp.Callable[[], None] = lambda: None,
                 assistant_speaking: tp.Callable[[], bool] = lambda: False):
        self.scheduler = scheduler
        self.sink = sink
        self.flush_frames = flush_frames    # STT steps after the last speech that bring out all its text
        self.flush = flush                  # False: wait for the user's own audio (the real-time path)
        self.on_speech_start = on_speech_start
        self.on_turn = on_turn
        self.on_barge_in = on_barge_in                  # the pause rule's barge-in (turns.PauseRule)
        self.assistant_speaking = assistant_speaking    # whether the assistant's audio is playing now
        self.detector = EndOfTurnDetector(**turn_options)
        self.slot = scheduler.acquire(self)
        if self.slot is None:
            raise CapacityError(f"all {len(scheduler.slots)} speech-recogniser slots are busy")
        self._clear()

    def _clear(self) -> None:
        self.frames_pushed = 0                        # user frames (the conversation clock)
        self.frames_queued = 0                        # frames the STT will consume: not dropped, flush included
        self.stt_frames = 0                           # frames the STT has consumed
        self._text = ""
        self._turn: tuple[int, int] | None = None     # (start_ms, end_ms) of the turn being finalised
        self._final_at: int | None = None             # STT frame count at which that turn is final
        self.flushed_frames = 0                       # silence frames fed at ends of turn (all turns)
        self.turn_detected_at = 0.0                   # when the detector ended the last turn (monotonic)

    def push(self, frame: UserFrame) -> None:
        self._queue(frame.pcm)
        self.frames_pushed += 1
        event = self.detector.update(frame.level_dbfs, assistant_speaking=self.assistant_speaking())
        if event is None:
            return
        if event.kind == "speech_start":
            self.on_speech_start()
        elif event.kind == "barge_in":
            self.on_barge_in()
        else:  # turn_end: final once the STT has heard its delay past the end of the speech
            self.turn_detected_at = time.monotonic()
            self._turn = (event.start_ms, event.end_ms)
            if self.flush:
                self._flush(event.end_ms)
                self._final_at = self.frames_queued
            else:
                self._final_at = self.frames_queued + self._missing_frames(event.end_ms)

    def _queue(self, pcm: np.ndarray) -> None:
        """Into the STT slot's queue. Counted in frames the STT will consume: a full queue drops its
        oldest frame, which the STT never hears (counting pushes instead made every later final wait
        for the dropped frames, a standing delay after any stall of the STT thread)."""
        assert self.slot is not None
        if self.scheduler.push(self.slot, pcm):
            self.frames_queued += 1

    def _missing_frames(self, speech_end_ms: int) -> int:
        """STT steps still needed for the text of the speech that ended at `speech_end_ms`: the STT's
        delay less the audio already queued after it."""
        heard_after = self.frames_pushed - math.ceil(speech_end_ms / FRAME_MS)
        return max(0, self.flush_frames - heard_after)

    def _flush(self, speech_end_ms: int) -> None:
        """The end of the turn is decided: the STT gets the rest of its delay as silence now, queued right
        behind the last frame, so its final text comes as soon as the model has stepped through it (ticks
        run back to back while the slot has frames waiting) instead of after that delay in real time.
        The user's next frames follow the flush; only the STT's own clock moves on by it."""
        silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        for _ in range(self._missing_frames(speech_end_ms)):
            self._queue(silence)
            self.flushed_frames += 1

    def on_stt(self, text: str | None, pause_prob: float) -> None:
        """The scheduler's delivery for this slot: one call per frame the STT consumed."""
        self.stt_frames += 1
        self.detector.observe_pause(pause_prob)
        if text and (self.detector.in_turn or self._final_at is not None):
            start_ms = self._turn[0] if self._turn else self.detector.turn_start_ms
            self._text += text.replace("\u2581", " ")
            self.sink(UserTranscript(self._text.strip(), start_ms))
        if self._final_at is not None and self.stt_frames >= self._final_at:
            self._finalise()

    def on_stt_failed(self, error: Exception) -> None:
        """One failed step, one error: the frame is lost (the scheduler counts it), the turn goes on. The
        recogniser's own state may be gone too (a restarted process starts every slot afresh)."""
        self.sink(EngineFailure("internal", f"speech recognition failed for a frame; the words around it may "
                                            f"be missing from the transcript ({_first_line(error)})"))

    def _finalise(self) -> None:
        assert self._turn is not None
        text, (start_ms, end_ms) = self._text.strip(), self._turn
        self._text, self._turn, self._final_at = "", None, None
        self.sink(UserTranscript(text, start_ms, end_ms))
        if text:  # noise that the recogniser heard as nothing is not a turn
            self.on_turn(text)

    def reset(self) -> None:
        assert self.slot is not None
        self.scheduler.reset(self.slot)
        self.detector.reset()
        self._clear()

    def close(self) -> None:
        if self.slot is not None:
            self.scheduler.release(self.slot)
            self.slot = None

    @property
    def frames_dropped(self) -> int:
        return self.slot.dropped if self.slot is not None else 0


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]
