"""One assistant turn of the cascade: the LLM's reply streamed into a TTS turn and played out paced.

An `AssistantTurn` holds all of a turn's mutable state in one object (as moshi keeps a stream's in
one `_LMGenState`): its tasks (the playout task `task`, which starts, owns and awaits the LLM task),
its TTS turn, the frames produced and not yet played, how many were played, the reply text and the
stage timestamps. A turn ends in one of two ways, each in one method:

- by itself (`_finish`): the LLM is done, the TTS has said everything and the last frame is played;
  the whole reply joins the history and `AssistantTurnEnded(stages=...)` is emitted if audio started;
- cut (`cancel`, the one path for interrupt, barge-in, reset and close): the LLM request and the
  tasks are cancelled, the TTS slot freed, unplayed frames dropped; the history keeps only the words
  played (`TtsTurn.text_until`), and `AssistantTurnEnded(interrupted=True, barge_in=...)` is
  emitted if audio had started.

Either way `AssistantTurnDone` follows, spoken or not. Both carry the turn's `usage`: the tokens of every
LLM response of the turn, summed (`TokenUsage`, filled by the backend at the end of each response).

A tool call is a pause inside the turn (`tool_calls.py`): the text said before the call is spoken, the
calls of the LLM's response go out as typed frames, the assistant's message with its `tool_calls` joins
the history, and the turn waits for every result (at most `TurnTools.timeout_s`; then an `EngineFailure`
and the turn ends) before it asks the LLM again with the results as `tool` messages, as often as the
LLM calls again (up to `tool_calls.MAX_ROUNDS` responses). `cancel` gives up a waiting call the same way
it cuts anything else; the history then says the call was cancelled. With `TurnTools.wait` off (the
Realtime API) the turn ends at its calls instead, and the client's `respond` goes on. `truncate` (the OpenAI Realtime endpoint's
`conversation.item.truncate`) cuts the turn at the time the client says it played to, or, once the turn
is over, shortens the reply it left in the history to the words heard by then.

The engine's TTS pump (`cascade.CascadeEngine`) steps the TTS turn of every turn that
`wants_frames()` on the TTS model thread and hands the frames back with `on_tts_frames`; the turn
wakes the pump (`TurnEngine.wake`) when it has new words or room for more frames. Everything here
runs on the event loop; only `tts` is stepped on the model thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import time
import typing as tp

from ..audio import FRAME_S
from ..models.llm import ChatMessage, LLMBackend, LLMError, TokenUsage
from ..models.llm.base import ToolCall, ToolCallDelta
from ..models.tts import TtsCapacity, TtsFrame, UnknownVoice
from ..models.tts_turn import SpeechModel, SpeechTurn
from .base import (AssistantAudio, AssistantText, AssistantTurnDone, AssistantTurnEnded, AssistantTurnStarted,
                   EngineFailure, LLMProcessing, Sink)
from .tool_calls import CallAssembler, TurnTools, Waiting


class TurnEngine(tp.Protocol):
    """What a turn needs from its engine (`cascade.CascadeEngine`)."""

    llm: LLMBackend
    tts: SpeechModel[tp.Any]
    max_tokens: int
    ahead_frames: int          # playout runs at most this many 80 ms frames ahead of real time
    llm_words_ahead: int       # the LLM is read no further than this many words ahead of the TTS (0: no limit)

    def wake(self) -> None:
        """Tells the TTS pump that a turn may want frames again."""
        ...


class AssistantTurn:
    """The assistant's answer to one user turn, from the LLM request to the last frame played.

    Created on the event loop (it starts its task at once); `history` is the conversation's list, to
    which the turn appends its reply when it ends; `stages` holds `time.monotonic()` of the stages so
    far (`user_end`: the end of the user's turn decided, `stt_final`), to which it adds the rest of
    `base.CASCADE_STAGES` where each happens: `llm_first_token` (a delta arrives), `tts_first_words` (the
    first whole word queued into the TTS turn), `tts_first_frame` (the pump hands back its first frame)
    and `tts_first_audio` (that frame played out to the session). Each is stamped after the one before
    it on the event loop, so they are ordered.
    """

    def __init__(self, engine: TurnEngine, sink: Sink, history: list[ChatMessage], stages: dict[str, float], *,
                 system_prompt: str, voice: str | None, temperature: float, seed: int | None,
                 tools: TurnTools | None = None, top_k: int | None = None, text_top_k: int | None = None):
        self.engine = engine
        self.sink = sink
        self.history = history
        self.stages = stages
        self.system_prompt, self.voice, self.temperature, self.seed = system_prompt, voice, temperature, seed
        self.top_k, self.text_top_k = top_k, text_top_k   # the TTS's audio top-k, the LLM's (None: their own)
        self.tools = tools or TurnTools()
        self.round_text = ""               # the text of the LLM's current response (the reply since the last call)
        self.said_before_calls = 0         # words of the reply already in the history with its calls
        self.made_calls = False
        self.waiting = Waiting()           # results the turn waits for
        self.usage = TokenUsage()          # every LLM response of the turn adds its tokens here
        self.ended_at: tuple[ToolCall, ...] = ()   # the calls the turn ended at (TurnTools.wait off)
        self.tts: SpeechTurn | None = None    # set once the TTS slot is taken
        self.reply = ""                    # the LLM's text so far
        self.pending: collections.deque[TtsFrame] = collections.deque()   # produced, not yet played
        self.played = 0                    # frames sent to the sink (80 ms each)
        self.audio_gaps = 0                # times the client's audio ran out after the first frame
        self.audio_gap_s = 0.0             # ... and how long it had none, in all
        self.speaking = False              # AssistantTurnStarted was sent
        self.reply_entry: ChatMessage | None = None   # what this turn added to the history, if anything
        self.ended = False                 # finished or cancelled: nothing more reaches the sink
        self.text_version = 0              # bumped at each LLM delta and at the end of the text
        self._starved_at = -1              # text_version when the TTS last had no frame to give
        self._reply_done = False           # the LLM task is over: all its text is in the TTS turn
        self._llm_cancel = asyncio.Event() # tells the LLM backend to stop (closes an endpoint's stream)
        self._wake = asyncio.Event()       # playout: new frames, the TTS turn done, or the reply done
        self._tts_moved = asyncio.Event()  # the TTS took up a queued word (`TtsTurn.on_words_taken`)
        self._llm: asyncio.Task | None = None
        self.task = asyncio.create_task(self._run(), name="assistant-turn")

    # --- the turn's tasks ------------------------------------------------------------------------
    async def _run(self) -> None:
        """The playout task: takes a TTS slot, starts the LLM task, plays out, and awaits the LLM task
        (or cancels and awaits it when the turn is cut)."""
        try:
            tts = self.engine.tts.start_turn(self.voice, self.seed, self.top_k)
        except (TtsCapacity, UnknownVoice) as exc:
            self.ended = True
            self.fail("capacity" if isinstance(exc, TtsCapacity) else "bad_message", str(exc))
            self.sink(AssistantTurnDone(interrupted=True))
            return
        self.tts = tts
        tts.on_words_taken = functools.partial(_call_soon, asyncio.get_running_loop(), self._tts_moved.set)
        self.sink(LLMProcessing())
        self._llm = asyncio.create_task(self._read_llm(tts), name="assistant-llm")
        try:
            await self._play(tts)
        finally:
            self._llm.cancel()            # a no-op when it is over
            with contextlib.suppress(asyncio.CancelledError):
                await self._llm

    async def _read_llm(self, tts: SpeechTurn) -> None:
        """The LLM task: streams the reply to the sink and, word by word, into the TTS turn; waits for the
        results of the calls the LLM makes and asks it again with them."""
        try:
            rounds = 0
            while not self.ended:
                calls = await self._one_response(tts, rounds)
                rounds += 1
                if not calls or self.ended:
                    break
                self._say_before_calls(tts, calls)
                if not self.tools.wait:
                    self.ended_at = tuple(calls)
                    break
                self.waiting.expect(calls)
                results = await self.waiting.results(self.tools.timeout_s)
                self._add_results(calls, results, f"error: no result within {self.tools.timeout_s:g} s")
                if len(results) < len(calls):
                    late = ", ".join(c.name for c in calls if c.call_id not in results)
                    self.fail("timeout", f"tool call {late}: no result within {self.tools.timeout_s:g} s; the turn ends")
                    break
        except LLMError as exc:
            if not self.ended:
                self.fail("internal", f"the language model failed: {exc}")
        finally:
            if not self.ended:
                tts.end_text()            # queues a last word still without its space
                self._words_given(tts)
                self._text_changed()
            self._reply_done = True
            self._wake.set()

    async def _one_response(self, tts: SpeechTurn, rounds: int) -> list[ToolCall]:
        """One LLM response: its text spoken as it streams, its calls (complete, in order) returned."""
        tools, choice = self.tools.offered(rounds)
        calls = CallAssembler(self.sink)
        messages = [ChatMessage("system", self.system_prompt), *self.history]
        self.round_text = ""
        async for delta in self.engine.llm.stream(messages, temperature=self.temperature,
                                                  max_tokens=self.engine.max_tokens, cancel=self._llm_cancel,
                                                  seed=self.seed, tools=tools, tool_choice=choice,
                                                  usage=self.usage, top_k=self.text_top_k):
            if self.ended:
                break
            self.stages.setdefault("llm_first_token", time.monotonic())
            if isinstance(delta, ToolCallDelta):
                calls.add(delta)
                continue
            self.reply += delta
            self.round_text += delta
            self.sink(AssistantText(delta))
            tts.push_text(delta)
            self._words_given(tts)
            self._text_changed()
            await self._keep_pace(tts)
        return [] if self.ended else calls.complete()

    async def _keep_pace(self, tts: SpeechTurn) -> None:
        """Stops reading the LLM while the TTS has `llm_words_ahead` words it has not taken up. The reply
        is not needed faster than it is spoken, and on a small machine an LLM decoding at full speed takes
        the CPU from the TTS steps that make the first frame (docs/cascade.md, "Pacing"). The in-process
        LLM's row sits the batch's steps out meanwhile (`batch.MAX_AHEAD`); an endpoint's stream waits
        in its socket."""
        limit = self.engine.llm_words_ahead
        while limit and not self.ended and tts.words_waiting >= limit:
            self._tts_moved.clear()
            await self._tts_moved.wait()

    def _say_before_calls(self, tts: SpeechTurn, calls: list[ToolCall]) -> None:
        """The text before the calls is spoken whole (its last word too) and joins the history with them."""
        if self.round_text and not self.round_text[-1].isspace():   # the text after the result is a new sentence
            self.reply += " "
            self.sink(AssistantText(" "))
            tts.push_text(" ")
            self._words_given(tts)
            self._text_changed()
        self.made_calls = True
        self.said_before_calls += len(self.round_text.split())
        self.reply_entry = ChatMessage("assistant", self.round_text.strip(), tool_calls=tuple(calls))
        self.history.append(self.reply_entry)
        self.round_text = ""

    def _add_results(self, calls: list[ToolCall], results: dict[str, str], missing: str) -> None:
        """A `tool` message per call, in the calls' order; `missing` for a call without a result, so that the
        history stays one the chat-completions API takes (every call answered)."""
        for call in calls:
            self.history.append(ChatMessage("tool", results.get(call.call_id, missing), tool_call_id=call.call_id))

    def tool_result(self, call_id: str, output: str) -> bool:
        """A result for a call this turn waits for; False when it waits for no such call."""
        return not self.ended and self.waiting.give(call_id, output)

    async def _play(self, tts: SpeechTurn) -> None:
        """Sends frames no further than `ahead_frames` ahead of real time, then ends the turn."""
        ahead = self.engine.ahead_frames
        started: float | None = None       # time.monotonic() when the first frame was there to play
        while not self.ended:
            if self.pending:
                if started is None or time.monotonic() > started + self.played * FRAME_S:
                    # the first frame, or the client's audio ran out (the TTS fell behind, or the turn waited for
                    # a tool call): pace from now, so that no burst of catching-up frames runs ahead of real time
                    if started is not None:
                        self.audio_gaps += 1
                        self.audio_gap_s += time.monotonic() - (started + self.played * FRAME_S)
                    started = time.monotonic() - self.played * FRAME_S
                delay = started + (self.played - ahead) * FRAME_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)   # pacing to real time
                    continue
                frame = self.pending.popleft()
                self.engine.wake()               # room for one more frame
                if not self.speaking:
                    self.speaking = True
                    self.stages["tts_first_audio"] = time.monotonic()
                    self.sink(AssistantTurnStarted())
                self.sink(AssistantAudio(frame.pcm))
                self.played += 1
            elif tts.done and self._reply_done:
                self._finish()
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    # --- the TTS pump's side (event loop) -------------------------------------------------------
    def wants_frames(self, room: int = 0) -> bool:
        """Whether the pump should step this turn's TTS: it is live, playout has room (`room` more frames
        than it asks for by itself: a turn may ride along with another's steps), and it has had new text
        since the TTS last had nothing to give (it waits for words from the LLM)."""
        return (not self.ended and self.tts is not None
                and len(self.pending) < self.engine.ahead_frames + 2 + room
                and self.text_version != self._starved_at)

    @property
    def speaking_started(self) -> bool:
        """Its TTS has given a frame: its steps run the depformer and Mimi (a speaking step)."""
        return "tts_first_frame" in self.stages

    def on_tts_frames(self, frames: list[TtsFrame], text_version: int, waiting: bool = True) -> None:
        """Frames the pump produced, stepping the TTS with the text as of `text_version`; `waiting`: the TTS
        stopped for want of words (else at its first frame, or when the pump cut the call for another turn)."""
        if self.ended or self.tts is None:
            return                               # a cut turn's last frames
        if not frames and waiting:
            self._starved_at = text_version      # nothing until the LLM sends more text
        elif frames and "tts_first_frame" not in self.stages:
            self.stages["tts_first_frame"] = time.monotonic()
        self.pending.extend(frames)
        if frames or self.tts.done:
            self._wake.set()

    def _words_given(self, tts: SpeechTurn) -> None:
        if tts.has_words and "tts_first_words" not in self.stages:
            self.stages["tts_first_words"] = time.monotonic()

    def _text_changed(self) -> None:
        self.text_version += 1
        self.engine.wake()

    # --- the end of the turn ----------------------------------------------------------------------
    def _finish(self) -> None:
        """The turn ended by itself: the whole reply joins the history."""
        self.ended = True
        if not self.made_calls or self.round_text.strip():   # (after calls, an empty last response adds nothing)
            self.reply_entry = ChatMessage("assistant", self.round_text.strip())
            self.history.append(self.reply_entry)
        self._release()
        if self.speaking:
            self.sink(AssistantTurnEnded(stages=self.stage_ms(), usage=self.usage_so_far(), playout=self.playout()))
        self.sink(AssistantTurnDone(tool_calls=self.ended_at, usage=self.usage_so_far()))

    def cancel(self, barge_in: bool = False, heard_s: float | None = None) -> None:
        """Cuts the turn now (interrupt, barge-in, reset, close, truncate): cancels the LLM request and the
        tasks (the playout task cancels and awaits the LLM task), frees the TTS slot, drops unplayed frames
        and keeps in history only the words the user heard (played, or up to `heard_s` when the client says
        it played less). Safe to call on an ended turn."""
        self._llm_cancel.set()
        self.task.cancel()
        if self._llm is not None:
            self._llm.cancel()
        if self.ended:
            return
        self.ended = True
        waited = self.waiting.unanswered()
        if waited:       # a cancelled wait: the history says so, and a late result finds nothing waiting
            self.history.extend(ChatMessage("tool", "error: cancelled before its result came (the user interrupted)",
                                            tool_call_id=call_id) for call_id in waited)
            self.waiting.clear()
        if self.tts is not None:
            heard_until = self.played * FRAME_S if heard_s is None else min(heard_s, self.played * FRAME_S)
            heard = self.tts.text_until(heard_until).split()[self.said_before_calls:]   # past what is in with calls
            self._keep_reply(" ".join(heard))
        self._release()
        if self.speaking:
            self.sink(AssistantTurnEnded(interrupted=True, barge_in=barge_in, stages=self.stage_ms(),
                                         usage=self.usage_so_far(), playout=self.playout()))
        self.sink(AssistantTurnDone(interrupted=True, usage=self.usage_so_far()))

    def truncate(self, heard_s: float) -> None:
        """The user heard the first `heard_s` of this turn's audio: a running turn is cut there; an ended
        one's reply in the history is shortened to the words that had started by then (or removed)."""
        if not self.ended:
            self.cancel(heard_s=heard_s)
            return
        if self.tts is None or self.reply_entry is None:
            return
        heard = self.tts.text_until(heard_s).strip()
        index = next((i for i, message in enumerate(self.history) if message is self.reply_entry), None)
        if index is None:     # the history was reset since
            return
        if heard:
            self.reply_entry = self.history[index] = ChatMessage("assistant", heard)
        else:
            del self.history[index]
            self.reply_entry = None

    def _keep_reply(self, text: str) -> None:
        if text:
            self.reply_entry = ChatMessage("assistant", text)
            self.history.append(self.reply_entry)

    def _release(self) -> None:
        if self.tts is not None:
            self.tts.cancel()                    # frees the TTS slot (already free after the last frame)
        self.pending.clear()

    def stage_ms(self) -> dict[str, float]:
        """Each stage's time from the detected end of the user's turn, as `<stage>_ms`."""
        start = self.stages.get("user_end")
        if start is None:
            return {}
        return {f"{name}_ms": round((t - start) * 1000.0, 1) for name, t in self.stages.items() if name != "user_end"}

    def playout(self) -> dict:
        """For `metrics`: the gaps in the turn's audio at the client (`AssistantTurnEnded.playout`)."""
        return {"audio_gaps": self.audio_gaps, "audio_gap_ms": round(self.audio_gap_s * 1000.0, 1)}

    def usage_so_far(self) -> TokenUsage:
        """A copy of the turn's token counts (a cut response's own call adds its counts after the cut, if at all)."""
        return dataclasses.replace(self.usage)

    def fail(self, code: str, message: str) -> None:
        self.sink(EngineFailure(code, message))


def _call_soon(loop: asyncio.AbstractEventLoop, callback: tp.Callable[[], None]) -> None:
    """`callback` on `loop`, from any thread; nothing once the loop is closed (the server is stopping)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)
