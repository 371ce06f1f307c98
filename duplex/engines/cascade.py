"""The cascade engine: streaming STT -> LLM -> streaming TTS, with turn detection and barge-in.

Per conversation (CascadeStream): user frames go to an STT slot (batched through the shared
BatchScheduler) and to an end-of-turn detector; at the end of a user turn the transcript goes to
the LLM, whose text streams word by word into a TTS turn; TTS frames are played out at most
`ahead_frames` ahead of real time, so an interruption takes effect within a few frames. User speech
while the assistant is busy (barge-in) or `interrupt` cancels LLM and TTS work, and the history keeps
the assistant's reply only up to the words actually played.

An assistant turn, with its tasks and all its state, is one `cascade_turn.AssistantTurn`; the stream
holds its current one, the engine keeps every turn until its task is over, and one TTS pump here
produces frames for all of them on the TTS model thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
import typing as tp

from ..audio import FRAME_MS
from ..config import CASCADE_CONFIG_KEYS, DEFAULT_SYSTEM_PROMPT, default_of
from ..models.llm import ChatMessage, LLMBackend
from ..models.stt import SttModel
from ..models.tts import TtsFrame, UnknownVoice
from ..models.tts_turn import SpeechModel, SpeechTurn
from .base import (BadChoice, ConfigOffer, Engine, EngineFailure, EngineStream, ResponseOptions, Sink, ToolCall, Unsupported,
                   UserFrame, UserTranscript)
from .cascade_turn import AssistantTurn
from .tool_calls import NO_RESULT, TurnTools
from .scheduler import BatchScheduler
from .transcriber import SttRunner, UserTranscriber
from .turns import PauseRule

# The LLM is read at most this many words ahead of what the TTS has taken up (cascade_turn._keep_pace): enough
# for the TTS's lookahead (`second_stream_ahead`, 2) and its first frame's words, no more (docs/cascade.md).
LLM_WORDS_AHEAD = 4
# A speaking turn with room for this many frames beyond its own threshold takes them in another turn's
# speaking step: one batched step costs about what one turn's costs (docs/cascade.md, "Speaking steps shared").
RIDE_ALONG_FRAMES = 2
# While a turn makes its first frame, a speaking turn with more than this many frames in hand waits (docs/cascade.md,
# "First frames first"): with `ahead_frames` more already at the client, that is over 300 ms of audio to play.
LOW_ON_AUDIO_FRAMES = 1

log = logging.getLogger(__name__)


class CascadeEngine(Engine):
    name = "cascade"

    def __init__(self, stt: SttModel, llm: LLMBackend, tts: SpeechModel[tp.Any], *, max_tokens: int = 120,
                 ahead_frames: int = 3, speech_threshold_dbfs: float = -45.0, end_of_turn_silence_ms: float = 640.0,
                 max_wait_ms: float | None = None, max_queue_frames: int = 125, pause: PauseRule | None = None,
                 end_of_turn_why: str = "", llm_words_ahead: int = LLM_WORDS_AHEAD):
        self.stt, self.llm, self.tts = stt, llm, tts
        self.scheduler = BatchScheduler(SttRunner(stt), stt.slots, max_wait_ms=max_wait_ms,
                                        max_queue_frames=max_queue_frames, name="stt")
        self.max_tokens = max_tokens
        self.ahead_frames = ahead_frames
        self.llm_words_ahead = llm_words_ahead
        # the end-of-turn rule, chosen by the composition root (server/loading.py): pause (semantic) or energy
        self.pause = pause
        self.end_of_turn = {"rule": "pause" if pause is not None else "energy", "why": end_of_turn_why}
        self.turn_options = {"threshold_dbfs": speech_threshold_dbfs, "silence_ms": end_of_turn_silence_ms,
                             "pause": pause}
        self.tts_worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tts-model")
        self.turns: set[AssistantTurn] = set()   # every turn whose task is not over yet (ended ones unwinding)
        self._wakeup = asyncio.Event()           # a turn may want frames: new words, a frame played, a new turn
        self._in_flight: set[AssistantTurn] = set()   # the turns of the pump call running on the TTS thread
        self._newcomer = threading.Event()       # another turn wants frames: that call stops after its step
        self._pump_task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.scheduler.start()
        self._pump_task = asyncio.create_task(self._pump(), name="tts-pump")

    async def stop(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        tasks = [turn.task for turn in self.turns]
        for task in tasks:
            task.cancel()               # each turn's playout task cancels and awaits its LLM task
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.scheduler.stop()
        self.tts_worker.shutdown(wait=True, cancel_futures=True)
        await asyncio.to_thread(self.stt.close)
        await asyncio.to_thread(self.tts.close)
        await self.llm.close()

    def has_free_slot(self) -> bool:
        return self.scheduler.has_free_slot()

    def config_offer(self) -> ConfigOffer:
        return ConfigOffer(CASCADE_CONFIG_KEYS, CASCADE_CONFIG_KEYS, tuple(self.tts.available_voices()),
                           self.tts.default_voice)

    def health(self) -> dict:
        speaking = sum(1 for turn in self.turns if turn.tts is not None and not turn.ended)
        health = {"slots": self.stt.slots, "active": self.scheduler.active, "speaking": speaking,
                  "llm": getattr(self.llm, "name", type(self.llm).__name__), "end_of_turn": self.end_of_turn,
                  "stt": self.stt.health(), "tts": self.tts.health()}
        if hasattr(self.llm, "stats"):   # the in-process LLM's batch: steps, most rows in one step, rows now
            health["llm_batch"] = self.llm.stats()
        return health

    def open(self, config: dict, sink: Sink) -> "CascadeStream":
        stream = CascadeStream(self, sink)
        stream.configure(config)
        stream.user = self.transcriber(sink, on_speech_start=stream.on_user_speech, on_turn=stream.on_user_turn,
                                       on_barge_in=stream.on_barge_in, assistant_speaking=stream.speaking)
        return stream

    def transcriber(self, sink: Sink, **callbacks) -> UserTranscriber:
        """A user side on this engine's STT (also lent to duplex sessions with `transcribe_user`).
        Raises CapacityError when every STT slot is taken."""
        return UserTranscriber(self.scheduler, sink, self.turn_options, self.stt.flush_frames, **callbacks)

    def wake(self) -> None:
        self._wakeup.set()
        if self._in_flight and any(self._joins_now(turn) for turn in self.turns):
            self._newcomer.set()   # the running pump call ends after its current step, and the turn joins

    def _joins_now(self, turn: AssistantTurn) -> bool:
        """Whether `turn` should cut the running pump call short to join the next one: it wants frames, and
        the call is not making a first frame that it can wait for (it is starting too, or about to run out)."""
        if turn in self._in_flight or not turn.wants_frames():
            return False
        # the call makes a first frame (an in-flight turn's first frame is recorded only once the call is over)
        first_frames = not all(other.speaking_started for other in self._in_flight)
        return not first_frames or not turn.speaking_started or _low_on_audio(turn)

    def keep(self, turn: AssistantTurn) -> None:
        """Holds `turn` until its task is over (the pump serves it meanwhile); a turn whose task failed
        is cut, so that its conversation goes on."""
        self.turns.add(turn)
        turn.task.add_done_callback(lambda task: self._turn_over(turn, task))
        self.wake()

    def _turn_over(self, turn: AssistantTurn, task: asyncio.Task) -> None:
        self.turns.discard(turn)
        if not task.cancelled() and task.exception() is not None:
            log.error("assistant turn failed", exc_info=task.exception())
            turn.cancel()

    # --- TTS: one pump for every speaking conversation, on the TTS model thread --------------
    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            wanted = [(turn, turn.tts, turn.text_version) for turn in turns_to_step(list(self.turns))
                      if turn.tts is not None]   # (always: turns_to_step takes turns holding a TTS slot)
            if not wanted:
                await self._wakeup.wait()
                continue
            self._in_flight = {turn for turn, _, _ in wanted}
            self._newcomer.clear()
            try:
                produced = await loop.run_in_executor(self.tts_worker, _produce_frames, self.tts,
                                                      [tts for _, tts, _ in wanted], self._newcomer.is_set)
            except Exception:
                log.exception("TTS step failed")
                for turn, _, version in wanted:
                    turn.fail("internal", "speech synthesis failed for this turn")
                    turn.on_tts_frames([], version, waiting=True)   # not again before more text
                continue
            finally:
                self._in_flight = set()
            for (turn, tts, version), frames in zip(wanted, produced, strict=True):
                turn.on_tts_frames(frames, version, waiting=tts.waits_for_text)


def turns_to_step(turns: list[AssistantTurn]) -> list[AssistantTurn]:
    """The turns the pump's next call steps, of the engine's `turns`: those that want frames (once they hold
    a TTS slot). First frames first: a starting turn's steps until its first frame are cheap (no depformer, no
    Mimi) and a speaking step costs several of them, so while one starts, speaking turns with frames in hand
    wait and only those about to run out join. A speaking step that runs anyway takes along the other speaking
    turns with room: one batched step for all, instead of a step each when their own time comes."""
    wanted = [turn for turn in turns if turn.tts is not None and turn.wants_frames()]
    if not all(turn.speaking_started for turn in wanted):
        wanted = [turn for turn in wanted if not turn.speaking_started or _low_on_audio(turn)]
    if any(turn.speaking_started for turn in wanted):
        chosen = set(wanted)
        wanted += [turn for turn in turns if turn not in chosen and turn.speaking_started and turn.tts is not None
                   and turn.wants_frames(room=RIDE_ALONG_FRAMES)]
    return wanted


def _low_on_audio(turn: AssistantTurn) -> bool:
    return len(turn.pending) <= LOW_ON_AUDIO_FRAMES


def _produce_frames(tts: SpeechModel[tp.Any], turns: list[SpeechTurn], stop: tp.Callable[[], bool]) -> list[list[TtsFrame]]:
    """Model thread: up to two frames per turn (enough to stay ahead of a real-time playout), in batched
    steps of the turns that still need one; a starting turn's delay steps run back to back (`produce`),
    until another turn wants frames (`stop`)."""
    produced = tts.produce(turns, frames_each=2, stop=stop)
    return [produced[turn] for turn in turns]


class CascadeStream(EngineStream):
    def __init__(self, engine: CascadeEngine, sink: Sink):
        self.engine = engine
        self.sink = sink
        self.user: UserTranscriber | None = None   # set by CascadeEngine.open
        self.system_prompt = DEFAULT_SYSTEM_PROMPT
        self.voice: str | None = None
        self.temperature: float = default_of("text_temperature")
        # Sampling top-k: None until a client sets it, so the LLM and the TTS keep their own defaults
        # (an OpenAI-compatible endpoint gets no `top_k` it may not know; the TTS samples with AUDIO_TOP_K).
        self.top_k: int | None = None        # the TTS's audio codebooks
        self.text_top_k: int | None = None   # the LLM's tokens
        self.seed: int | None = None
        self.history: list[ChatMessage] = []
        self.keyed: dict[str, tp.Callable[[], ChatMessage | None]] = {}   # add_message / name_reply: key -> entry
        self.turn: AssistantTurn | None = None   # the current (or last) assistant turn
        self.auto_respond = True                 # a spoken user turn is answered when it ends
        self.tools = TurnTools(timeout_s=default_of("tool_timeout_s"))   # what turns may call (tool_calls.py)

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
            raise Unsupported(f"the cascade does not take {', '.join(unknown)}", unknown[0])
        if "voice" in config:
            try:
                self.engine.tts.voice_path(config["voice"])
            except UnknownVoice as exc:   # only the server's own voices: nothing a client names is looked up
                raise BadChoice(str(exc), "voice") from None
            self.voice = config["voice"]
        self.system_prompt = config.get("system_prompt", self.system_prompt)
        self.temperature = config.get("text_temperature", config.get("temperature", self.temperature))
        self.seed = config.get("seed", self.seed)
        self.top_k = config.get("top_k", self.top_k)
        self.text_top_k = config.get("text_top_k", self.text_top_k)
        self.tools = self.tools.configured(config)

    # --- user audio (the UserTranscriber calls back) --------------------------------------------
    def push_audio(self, frame: UserFrame) -> None:
        assert self.user is not None
        self.user.push(frame)

    def on_user_speech(self) -> None:
        """The user started speaking (energy). With the pause rule, speech over the assistant's audio is the
        pause head's to judge (`on_barge_in`); speech while it is still thinking cuts it either way."""
        if self.busy and not (self.engine.pause is not None and self.speaking()):
            self._cancel_turn(barge_in=True)

    def on_barge_in(self) -> None:
        """The pause rule: the user's pause probability fell while the assistant spoke, past the grace."""
        if self.busy:
            self._cancel_turn(barge_in=True)

    def speaking(self) -> bool:
        """Whether the assistant's audio is playing (its turn sent a first frame and is not over)."""
        return self.turn is not None and self.turn.speaking and not self.turn.ended

    def on_user_turn(self, text: str) -> None:
        assert self.user is not None
        if not self.auto_respond:       # the client asks for answers (`respond`)
            self.history.append(ChatMessage("user", text))
            return
        self._start_turn(text, {"user_end": self.user.turn_detected_at, "stt_final": time.monotonic()})

    def text_input(self, text: str) -> None:
        if self.busy:
            self._cancel_turn(barge_in=True)
        now_ms = (self.user.frames_pushed if self.user else 0) * FRAME_MS
        self.sink(UserTranscript(text, now_ms, now_ms))
        self._start_turn(text, {"user_end": time.monotonic(), "stt_final": time.monotonic()})

    # --- turn-taking under the client's control (the OpenAI Realtime endpoint) -------------------
    def add_user_text(self, text: str) -> None:
        self.history.append(ChatMessage("user", text))

    def add_message(self, role: str, text: str, key: str, after: list[str] | None = None) -> None:
        message = ChatMessage(role, text)
        self.keyed[key] = lambda: message
        if after is None:
            self.history.append(message)
            return
        positions = (self._position(k) for k in after)
        index = next((i for i in positions if i is not None), -1)
        self.history.insert(index + 1, message)

    def delete_message(self, key: str) -> None:
        index = self._position(key)
        if index is not None:
            del self.history[index]
        self.keyed.pop(key, None)

    def name_reply(self, key: str) -> None:
        turn = self.turn
        if turn is not None:
            self.keyed[key] = lambda: turn.reply_entry

    def _position(self, key: str) -> int | None:
        """Where the message known as `key` is in the history (by identity), if it is there."""
        entry = self.keyed[key]() if key in self.keyed else None
        return next((i for i, message in enumerate(self.history) if message is entry), None)

    def respond(self, options: ResponseOptions | None = None) -> None:
        if self.busy:
            self._cancel_turn(barge_in=False)
        now = time.monotonic()
        self._begin_turn({"user_end": now, "stt_final": now}, options)

    # --- tool calls (a pause inside a turn: cascade_turn.py, tool_calls.py) ----------------------
    def tool_result(self, call_id: str, output: str) -> None:
        if self.turn is not None and self.turn.tool_result(call_id, output):
            return
        if not self.tools.wait:   # the turn ended at its calls: the result joins the history, the next `respond` goes on
            answered = next((i for i, m in enumerate(self.history) if m.tool_call_id == call_id), None)
            if answered is not None and self.history[answered].content == NO_RESULT:   # late: it replaces the stand-in
                self.history[answered] = ChatMessage("tool", output, tool_call_id=call_id)
                return
            if answered is None and self._place_result(ChatMessage("tool", output, tool_call_id=call_id)):
                return
        raise BadChoice(f"no tool call {call_id!r} is waiting for a result (unknown, answered, timed out or cancelled)")

    def _place_result(self, result: ChatMessage) -> bool:
        """A `tool` message right after its call's assistant message (and the results already there), where
        the chat-completions API wants it, whatever was said since; False when no such call is in the history."""
        index = next((i for i, m in enumerate(self.history)
                      if any(call.call_id == result.tool_call_id for call in m.tool_calls)), None)
        if index is None:
            return False
        index += 1
        while index < len(self.history) and self.history[index].role == "tool":
            index += 1
        self.history.insert(index, result)
        return True

    def _answer_open_calls(self) -> None:
        """Before a new answer (`set_tool_wait(False)`): each call still without a result gets NO_RESULT, so
        that the history stays one an OpenAI-style endpoint takes; a result that comes later replaces it."""
        answered = {m.tool_call_id for m in self.history if m.tool_call_id is not None}
        open_calls = [call.call_id for m in self.history for call in m.tool_calls if call.call_id not in answered]
        for call_id in open_calls:
            self._place_result(ChatMessage("tool", NO_RESULT, tool_call_id=call_id))

    def set_tool_wait(self, on: bool) -> None:
        self.tools = dataclasses.replace(self.tools, wait=on)

    def add_tool_call(self, call: ToolCall) -> None:
        self.history.append(ChatMessage("assistant", "", tool_calls=(call,)))

    def set_auto_respond(self, on: bool) -> None:
        self.auto_respond = on

    def truncate(self, heard_ms: float) -> None:
        if self.turn is None:
            raise Unsupported("there is no assistant turn to truncate")
        self.turn.truncate(heard_ms / 1000.0)

    # --- the assistant's turn (cascade_turn.AssistantTurn) -----------------------------------
    @property
    def busy(self) -> bool:
        return self.turn is not None and not self.turn.ended

    def _start_turn(self, user_text: str, stages: dict[str, float]) -> None:
        if self.busy:                   # a typed turn still answering when a spoken one ends
            self._cancel_turn(barge_in=True)
        self.history.append(ChatMessage("user", user_text))
        self._begin_turn(stages)

    def _begin_turn(self, stages: dict[str, float], options: ResponseOptions | None = None) -> None:
        """An assistant turn answering the history as it stands (with one answer's overrides)."""
        options = options or ResponseOptions()
        if not self.tools.wait:
            self._answer_open_calls()
        tools = self.tools.configured({key: value for key, value in (("tools", options.tools),
                                                                     ("tool_choice", options.tool_choice)) if value is not None})
        self.turn = AssistantTurn(self.engine, self.sink, self.history, stages,
                                  system_prompt=options.instructions or self.system_prompt, voice=self.voice,
                                  temperature=self.temperature, seed=self.seed, tools=tools,
                                  top_k=self.top_k, text_top_k=self.text_top_k)
        self.engine.keep(self.turn)

    def _cancel_turn(self, barge_in: bool) -> None:
        if self.turn is not None:
            self.turn.cancel(barge_in=barge_in)

    def fail(self, code: str, message: str) -> None:
        self.sink(EngineFailure(code, message))

    # --- controls ----------------------------------------------------------------------------
    def interrupt(self) -> None:
        self._cancel_turn(barge_in=False)

    def reset(self) -> None:
        self._cancel_turn(barge_in=False)
        self.history.clear()
        self.keyed.clear()
        if self.user is not None:
            self.user.reset()

    def close(self) -> None:
        self._cancel_turn(barge_in=False)
        if self.user is not None:
            self.user.close()
