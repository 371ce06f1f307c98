"""The cascade engine: streaming STT -> LLM -> streaming TTS, with turn detection and barge-in.

Per conversation (CascadeStream): user frames go to an STT slot (batched through the shared
BatchScheduler) and to an end-of-turn detector; at the end of a user turn the transcript goes to
the LLM, whose text streams word by word into a TTS turn; TTS frames are played out at most
`ahead_frames` ahead of real time, so an interruption takes effect within a few frames. User speech
while the assistant is busy (barge-in) or `interrupt` cancels LLM and TTS work, and the history keeps
the assistant's reply only up to the words actually played.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time

from ..audio import FRAME_MS, FRAME_S
from ..config import CASCADE_CONFIG_KEYS, DEFAULT_SYSTEM_PROMPT
from ..models.llm import ChatMessage, LLMBackend, LLMError
from ..models.stt import SttBatch
from ..models.tts import TtsCapacity, TtsEngineModel, TtsFrame, TtsTurn, UnknownVoice
from .base import (AssistantAudio, AssistantText, AssistantTurnEnded, AssistantTurnStarted, Engine,
                   EngineFailure, EngineStream, LLMProcessing, Sink, Unsupported, UserFrame, UserTranscript)
from .scheduler import BatchScheduler
from .transcriber import SttRunner, UserTranscriber

log = logging.getLogger(__name__)


class CascadeEngine(Engine):
    name = "cascade"

    def __init__(self, stt: SttBatch, llm: LLMBackend, tts: TtsEngineModel, *, max_tokens: int = 120,
                 ahead_frames: int = 3, speech_threshold_dbfs: float = -45.0, end_of_turn_silence_ms: float = 640.0,
                 max_wait_ms: float = 20.0, max_queue_frames: int = 125):
        self.stt, self.llm, self.tts = stt, llm, tts
        self.scheduler = BatchScheduler(SttRunner(stt), stt.slots, max_wait_ms=max_wait_ms,
                                        max_queue_frames=max_queue_frames, name="stt")
        self.max_tokens = max_tokens
        self.ahead_frames = ahead_frames
        self.turn_options = {"threshold_dbfs": speech_threshold_dbfs, "silence_ms": end_of_turn_silence_ms,
                             "pause_threshold": 0.6 if stt.has_pause else None}
        # STT text lags the audio: a turn is final once the STT has heard this much past its end.
        silence_frames = round(end_of_turn_silence_ms / FRAME_MS)
        self.stt_lag_frames = max(0, stt.flush_frames - silence_frames)
        self.tts_worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tts-model")
        self.speaking: set[CascadeStream] = set()
        self._wakeup = asyncio.Event()
        self._pump_task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.scheduler.start()
        self._pump_task = asyncio.create_task(self._pump(), name="tts-pump")

    async def stop(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
        await self.scheduler.stop()
        self.tts_worker.shutdown(wait=True, cancel_futures=True)

    def has_free_slot(self) -> bool:
        return self.scheduler.has_free_slot()

    def health(self) -> dict:
        return {"slots": self.stt.slots, "active": self.scheduler.active, "speaking": len(self.speaking),
                "llm": getattr(self.llm, "name", type(self.llm).__name__)}

    def open(self, config: dict, sink: Sink) -> "CascadeStream":
        stream = CascadeStream(self, sink)
        stream.configure(config)
        stream.user = self.transcriber(sink, on_speech_start=stream.on_user_speech, on_turn=stream.on_user_turn)
        return stream

    def transcriber(self, sink: Sink, **callbacks) -> UserTranscriber:
        """A user side on this engine's STT (also lent to duplex sessions with `transcribe_user`).
        Raises CapacityError when every STT slot is taken."""
        return UserTranscriber(self.scheduler, sink, self.turn_options, self.stt_lag_frames, **callbacks)

    def wake(self) -> None:
        self._wakeup.set()

    # --- TTS: one pump for every speaking conversation, on the TTS model thread --------------
    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wanted = [(s, s.tts_turn) for s in list(self.speaking) if s.tts_turn is not None and s.wants_frames()]
            if not wanted:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=FRAME_S / 2)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                produced = await loop.run_in_executor(self.tts_worker, _produce_frames, wanted)
            except Exception:
                log.exception("TTS step failed")
                for stream, _ in wanted:
                    stream.fail("internal", "speech synthesis failed for this turn")
                continue
            for (stream, turn), frames in zip(wanted, produced):
                stream.on_tts_frames(turn, frames)
            if not any(frames for frames in produced):
                await asyncio.sleep(FRAME_S / 4)  # waiting for words from the LLM


def _produce_frames(wanted: list[tuple["CascadeStream", TtsTurn]]) -> list[list[TtsFrame]]:
    """Model thread: up to two frames per turn (enough to stay ahead of a real-time playout)."""
    out = []
    for _, turn in wanted:
        frames = []
        for _ in range(2):
            frame = turn.step()
            if frame is None:
                break
            frames.append(frame)
        out.append(frames)
    return out


class CascadeStream(EngineStream):
    def __init__(self, engine: CascadeEngine, sink: Sink):
        self.engine = engine
        self.sink = sink
        self.user: UserTranscriber | None = None   # set by CascadeEngine.open
        self.system_prompt = DEFAULT_SYSTEM_PROMPT
        self.voice: str | None = None
        self.temperature = 0.7
        self.seed: int | None = None
        self.history: list[ChatMessage] = []
        self._response: asyncio.Task | None = None
        self._cancel = asyncio.Event()
        self.tts_turn: TtsTurn | None = None
        self._pending: collections.deque[TtsFrame] = collections.deque()
        self._playout: asyncio.Task | None = None
        self._played = 0
        self._speaking = False
        self._stages: dict[str, float] = {}
        self._reply = ""

    @property
    def mode(self) -> str:
        return "cascade"

    @property
    def frame_locked(self) -> bool:
        return False

    @property
    def frames_dropped(self) -> int:
        return self.user.frames_dropped if self.user is not None else 0

    # --- configuration ---------------------------------------------------------------------------
    def configure(self, config: dict) -> None:
        unknown = sorted(set(config) - CASCADE_CONFIG_KEYS)
        if unknown:
            raise Unsupported(f"the cascade does not take {', '.join(unknown)}")
        if "voice" in config:
            try:
                self.engine.tts.voice_path(config["voice"])
            except UnknownVoice as exc:
                raise Unsupported(str(exc)) from None
            self.voice = config["voice"]
        self.system_prompt = config.get("system_prompt", self.system_prompt)
        self.temperature = config.get("text_temperature", config.get("temperature", self.temperature))
        self.seed = config.get("seed", self.seed)

    # --- user audio (the UserTranscriber calls back) --------------------------------------------
    def push_audio(self, frame: UserFrame) -> None:
        assert self.user is not None
        self.user.push(frame)

    def on_user_speech(self) -> None:
        if self.busy:
            self._cut(barge_in=True)
        self._stages = {}

    def on_user_turn(self, text: str) -> None:
        assert self.user is not None
        self._stages = {"user_end": self.user.turn_detected_at, "stt_final": time.monotonic()}
        self._start_response(text)

    def text_input(self, text: str) -> None:
        if self.busy:
            self._cut(barge_in=True)
        now_ms = (self.user.frames_pushed if self.user else 0) * FRAME_MS
        self.sink(UserTranscript(text, now_ms, now_ms))
        self._stages = {"user_end": time.monotonic(), "stt_final": time.monotonic()}
        self._start_response(text)

    # --- the assistant's turn ----------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._response is not None or self._speaking or self.tts_turn is not None

    def _start_response(self, user_text: str) -> None:
        self.history.append(ChatMessage("user", user_text))
        self._cancel = asyncio.Event()
        self._response = asyncio.create_task(self._respond())

    async def _respond(self) -> None:
        try:
            turn = self.engine.tts.start_turn(self.voice, self.seed)
        except (TtsCapacity, UnknownVoice) as exc:
            self.fail("capacity" if isinstance(exc, TtsCapacity) else "bad_message", str(exc))
            self._response = None
            return
        self.tts_turn, self._pending, self._played = turn, collections.deque(), 0
        self.engine.speaking.add(self)
        self.sink(LLMProcessing())
        reply = ""
        messages = [ChatMessage("system", self.system_prompt), *self.history]
        try:
            async for delta in self.engine.llm.stream(messages, temperature=self.temperature,
                                                      max_tokens=self.engine.max_tokens, cancel=self._cancel,
                                                      seed=self.seed):
                if self._cancel.is_set():
                    break
                self._stages.setdefault("llm_first_token", time.monotonic())
                reply += delta
                self.sink(AssistantText(delta))
                turn.push_text(delta)
                self.engine.wake()
        except LLMError as exc:
            self.fail("internal", f"the language model failed: {exc}")
        finally:
            if turn is self.tts_turn:
                turn.end_text()
                self.engine.wake()
            self._reply = reply
            self._response = None

    def wants_frames(self) -> bool:
        return len(self._pending) < self.engine.ahead_frames + 2

    def on_tts_frames(self, turn: TtsTurn, frames: list[TtsFrame]) -> None:
        if turn is not self.tts_turn:
            return  # a cut turn's last frames
        self._pending.extend(frames)
        if self._playout is None and (self._pending or turn.done):
            self._playout = asyncio.create_task(self._play(turn))

    async def _play(self, turn: TtsTurn) -> None:
        """Sends frames no further than `ahead_frames` ahead of real time, then ends the turn."""
        started = time.monotonic()
        try:
            while turn is self.tts_turn:
                if self._pending:
                    due = started + (self._played - self.engine.ahead_frames) * FRAME_S
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        continue
                    frame = self._pending.popleft()
                    if not self._speaking:
                        self._speaking = True
                        self._stages["tts_first_audio"] = time.monotonic()
                        self.sink(AssistantTurnStarted())
                    self.sink(AssistantAudio(frame.pcm))
                    self._played += 1
                elif turn.done and self._response is None:
                    self._finish_turn(turn)
                    return
                else:
                    await asyncio.sleep(FRAME_S / 4)
        finally:
            if self._playout is asyncio.current_task():
                self._playout = None

    def _finish_turn(self, turn: TtsTurn) -> None:
        self.history.append(ChatMessage("assistant", self._reply.strip()))
        self._release_turn()
        if self._speaking:
            self._speaking = False
            self.sink(AssistantTurnEnded(stages=self._stage_ms()))

    def _stage_ms(self) -> dict[str, float]:
        start = self._stages.get("user_end")
        if start is None:
            return {}
        return {f"{name}_ms": round((t - start) * 1000.0, 1) for name, t in self._stages.items() if name != "user_end"}

    def _release_turn(self) -> None:
        if self.tts_turn is not None:
            self.tts_turn.cancel()
        self.tts_turn = None
        self._pending.clear()
        self.engine.speaking.discard(self)

    def _cut(self, barge_in: bool) -> None:
        """Cancels LLM and TTS work now; keeps in history only the words the user heard."""
        self._cancel.set()
        if self._response is not None:
            self._response.cancel()
            self._response = None
        turn = self.tts_turn
        if turn is not None:
            heard = turn.text_until(self._played * FRAME_S).strip()
            if heard:
                self.history.append(ChatMessage("assistant", heard))
        self._release_turn()
        if self._playout is not None:
            self._playout.cancel()
            self._playout = None
        if self._speaking:
            self._speaking = False
            self.sink(AssistantTurnEnded(interrupted=True, barge_in=barge_in, stages=self._stage_ms()))

    def fail(self, code: str, message: str) -> None:
        self.sink(EngineFailure(code, message))

    # --- controls ----------------------------------------------------------------------------
    def interrupt(self) -> None:
        self._cut(barge_in=False)

    def reset(self) -> None:
        self._cut(barge_in=False)
        self.history.clear()
        if self.user is not None:
            self.user.reset()

    def close(self) -> None:
        self._cut(barge_in=False)
        if self.user is not None:
            self.user.close()

