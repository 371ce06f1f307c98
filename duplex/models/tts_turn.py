"""One TTS turn (text in, frames out) and the seam it has with the engine model (`tts.TtsEngineModel`).

A `TtsTurn` is what the cascade holds while the assistant speaks: it queues the LLM's words (any
thread) and hands out 80 ms frames (model thread). The engine model keeps the turn's generation
state in a `TurnGenState` that it alone writes; the turn reads it for `done` and its word times.
What the turn needs from the engine is the `TtsTurnEngine` protocol below: a turn never touches the
engine's internals, nor the engine the turn's (it takes the queued words with `take_text()`).
"""

from __future__ import annotations

import collections
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from moshi.models.tts import Entry, State

from ..audio import FRAME_S


@dataclass
class TtsFrame:
    pcm: np.ndarray   # [F] float32 in [-1, 1], F = 1920 samples
    index: int        # position on the turn's audio clock, in frames (0 = the turn's first frame)


@dataclass(eq=False)
class TurnGenState:
    """The engine model's state of one turn in its slot (moshi's `_LMGenState`, per turn). Written by
    the engine model on the model thread only; the turn reads it for `done` and its word times."""
    slot: int
    voice: str
    seed: int | None
    machine: State             # moshi's state machine: queued entries, transcript [(word, step)], end_step
    top_k: int | None = None   # audio sampling top-k for this turn (None: the model's default, AUDIO_TOP_K)
    steps: int = 0             # model steps this turn has run
    emitted: int = 0           # audio frames produced so far
    fresh: bool = True         # the slot must be reset (model, codec, seed, voice) before the first step
    finished: bool = False     # all audio produced (frames may still be buffered in the turn)


class SpeechTurn(tp.Protocol):
    """What the cascade holds while the assistant speaks: a `TtsTurn` here, or a `tts_process.RemoteTtsTurn`
    whose model runs in a child process. Text in from the event loop; frames come out of the model's `produce`."""

    on_words_taken: tp.Callable[[], None] | None   # the model's text stream took up a queued word (any thread)
    waits_for_text: bool                           # its last step check found it waiting for words

    def push_text(self, text_delta: str) -> None: ...

    def end_text(self) -> None: ...

    def cancel(self) -> None: ...

    @property
    def cancelled(self) -> bool: ...

    @property
    def has_words(self) -> bool: ...

    @property
    def words_waiting(self) -> int: ...

    @property
    def done(self) -> bool: ...

    def text_until(self, seconds: float) -> str: ...


TurnT = tp.TypeVar("TurnT", bound=SpeechTurn)


class SpeechModel(tp.Protocol[TurnT]):
    """The seam between the cascade and its speech synthesiser: `tts.TtsEngineModel` (on a thread of this
    process) or `tts_process.TtsProcess` (the same model in a child process)."""

    default_voice: str

    @property
    def lookahead_words(self) -> int:
        """Words the model must see beyond the one it takes (moshi's `second_stream_ahead`)."""
        ...

    def available_voices(self) -> list[str]: ...

    def voice_path(self, voice: str) -> Path:
        """The voice's embedding file; raises `UnknownVoice` for a name the server does not offer."""
        ...

    def start_turn(self, voice: str | None = None, seed: int | None = None, top_k: int | None = None) -> TurnT:
        """A new turn on a free slot; raises UnknownVoice or TtsCapacity. Event loop."""
        ...

    def produce(self, turns: list[TurnT], frames_each: int = 2,
                stop: tp.Callable[[], bool] | None = None) -> dict[TurnT, list[TtsFrame]]:
        """Model thread: steps `turns` until each has `frames_each` new frames or cannot step (see
        `TtsEngineModel.produce`)."""
        ...

    def health(self) -> dict: ...

    def close(self) -> None: ...


class TtsTurnEngine(tp.Protocol):
    """What a turn asks of the engine model that created it (`tts.TtsEngineModel`)."""

    def word_entries(self, word: str, first: bool) -> list[Entry]:
        """A word as state-machine entries (`first`: the turn's first word). Any thread."""
        ...

    def ready(self, turn: "TtsTurn") -> bool:
        """Model thread: takes the turn's queued words; whether it may step now."""
        ...

    def step(self, turns: list["TtsTurn"]) -> dict["TtsTurn", TtsFrame | None]:
        """Model thread: one batched step of those of `turns` that may step; each one's new frame, or None
        before its audio."""
        ...

    def release(self, turn: "TtsTurn") -> None:
        """Frees the turn's slot. Any thread."""
        ...


class TtsTurn:
    """One assistant turn: text in as it streams, 80 ms frames out, word start times as they play.

    Cancel by `cancel()` or by simply dropping every reference: the slot is freed either way.
    """

    def __init__(self, engine: TtsTurnEngine, gen: TurnGenState):
        self.engine = engine
        self.gen = gen                     # the engine model's state of this turn (read-only here)
        self._incoming: collections.deque[Entry] = collections.deque()   # from push_text, any thread
        self._partial = ""                 # text after the last whitespace: maybe half a word
        self._first_word = True
        self._text_ended = False           # set by end_text (any thread)
        self._cancelled = False
        # Called on the model thread when the model's text stream takes up a queued word (the cascade wakes
        # its LLM reader with it, cascade_turn._keep_pace); it must only hand the news to its own thread.
        self.on_words_taken: tp.Callable[[], None] | None = None
        self.waits_for_text = False        # model thread: its last step check found it waiting for words

    @property
    def slot(self) -> int:
        return self.gen.slot

    @property
    def voice(self) -> str:
        return self.gen.voice

    @property
    def seed(self) -> int | None:
        return self.gen.seed

    # ---- text in (any thread) -----------------------------------------------------------------

    def push_text(self, text_delta: str) -> None:
        """Adds LLM output as it streams; a word is queued once the whitespace after it arrives."""
        if self._text_ended:
            raise RuntimeError("push_text after end_text")
        words, self._partial = whole_words(self._partial, text_delta)
        for word in words:
            self._queue_word(word)

    def end_text(self) -> None:
        """No more text: the last word is queued and the turn runs to its end."""
        if self._partial:
            self._queue_word(self._partial)
            self._partial = ""
        self._text_ended = True

    def cancel(self) -> None:
        self._cancelled = True
        self.engine.release(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def has_words(self) -> bool:
        """Whether a whole word has been queued for the model (a word counts once the space after it, or
        `end_text`, has come)."""
        return not self._first_word

    @property
    def words_waiting(self) -> int:
        """Word entries queued and not yet taken up by the model's text stream (read off the model thread:
        a count for pacing, not an exact figure)."""
        return len(self._incoming) + len(self.gen.machine.entries)

    def _queue_word(self, word: str) -> None:
        entries = self.engine.word_entries(word, first=self._first_word)
        if entries:
            self._first_word = False
        self._incoming.extend(entries)

    def take_text(self) -> tuple[list[Entry], bool]:
        """Model thread (`engine.ready`): the word entries queued since the last call, and whether the
        text is complete, read before draining (end_text queues its last word, then sets the flag)."""
        ended = self._text_ended
        entries = []
        while self._incoming:
            entries.append(self._incoming.popleft())
        return entries, ended

    # ---- frames out (model thread) ------------------------------------------------------------

    def step(self) -> TtsFrame | None:
        """The next 80 ms frame, running engine steps of this turn alone until it has one (the first
        takes `first_audio_steps` steps); None when the turn waits for more words, or is over. (The
        cascade steps its turns together: `TtsEngineModel.produce`.)"""
        while produced := self.engine.step([self]):
            frame = produced[self]
            if frame is not None and not self._cancelled:
                return frame
        return None

    @property
    def done(self) -> bool:
        """All text spoken and every frame handed out (or the turn was cancelled)."""
        return self._cancelled or self.gen.finished

    @property
    def word_times(self) -> list[tuple[str, float]]:
        """(word, start_s on the turn's audio clock) for the words whose first frame exists."""
        return word_times_of(list(self.gen.machine.transcript), self.gen.emitted)

    def text_until(self, seconds: float) -> str:
        """The words that had started by `seconds` of played audio: the history to keep after barge-in."""
        return " ".join(word for word, start in self.word_times if start < seconds)


def word_times_of(transcript: list[tuple[str, int]], emitted: int) -> list[tuple[str, float]]:
    """(word, start_s) from moshi's transcript [(word, step)], for the words whose first frame exists."""
    return [(word, step * FRAME_S) for word, step in transcript if step < emitted]


def whole_words(partial: str, text_delta: str) -> tuple[list[str], str]:
    """The words a streamed delta completes, and the text after its last whitespace (maybe half a word),
    given the text kept from before (`partial`)."""
    text = partial + text_delta
    words = text.split()
    rest = words.pop() if words and not text[-1].isspace() else ""
    return words, rest
