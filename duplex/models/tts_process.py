"""The speech synthesiser in its own process: `TtsEngineModel` in a child, driven over a pipe.

Why, as for the STT (stt_process.py): a TTS step is thousands of small torch calls, each of which gives the
interpreter lock up and takes it back, so on one process the TTS thread waits for the LLM thread and the
event loop whenever they run. A turn's first frame is 19 steps run back to back, exactly when the LLM is
writing the reply: in its own process the TTS has its interpreter to itself (docs/cascade.md).

The parent keeps a `RemoteTtsTurn` per turn and the child the real `TtsTurn`. Text, ends and cancels go
down the pipe as they come (the child reads them between steps, so a word written during a first frame's
steps is seen at the next step, as on a thread); `produce` is one request and one reply, and the reply
carries, per turn, its frames and what the parent reads between calls: words queued and taken, whether it
waits for text, whether it is finished, its word times. A cut (`stop`) is a shared event the child checks
between steps. A child that dies fails the call that found it (the cascade fails those turns with an
`error`); the next turn starts a new child, and the turns of the old one are over.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
import time
import typing as tp
import weakref
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from .child_process import ChildBacked, ChildModel, ChildModelError, context
from .tts_child import serve_tts
from .tts_turn import TtsFrame, whole_words, word_times_of

log = logging.getLogger(__name__)

POLL_S = 0.002            # how often a waiting produce call looks at its `stop`


class TtsProcessError(RuntimeError):
    """The synthesiser's process failed a call or is gone."""


class RemoteTtsTurn:
    """One turn of a `TtsProcess` (a `SpeechTurn`): text goes to the child as it comes; what the child
    reported at the end of the last `produce` is what `words_waiting`, `done` and `text_until` read."""

    def __init__(self, model: "TtsProcess", turn_id: int, voice: str, seed: int | None, generation: int):
        self.model, self.id, self.voice, self.seed = model, turn_id, voice, seed
        self.generation = generation      # the child it lives in
        self.on_words_taken: tp.Callable[[], None] | None = None
        self.waits_for_text = False
        self._partial = ""                # the text after the last whitespace, not sent as a word yet
        self._words_sent = 0              # whole words sent since the last report
        self._any_word = False
        self._cancelled = False
        self.lost = False                 # its child died
        self.finished = False             # the child produced its last frame
        self.waiting = 0                  # entries queued in the child, not taken yet (as of the last report)
        self.taken = 0                    # entries the child's text stream took up (as of the last report)
        self.emitted = 0
        self.transcript: list[tuple[str, int]] = []
        # a turn dropped without cancel still frees its slot in the child
        weakref.finalize(self, model.forget, turn_id, generation)

    def push_text(self, text_delta: str) -> None:
        words, self._partial = whole_words(self._partial, text_delta)
        if words:
            self._any_word = True
            self._words_sent += len(words)
            self.model.send(("text", self.id, " ".join(words) + " "), self.generation)

    def end_text(self) -> None:
        if self._partial:
            self._any_word = True
            self._words_sent += 1
        self.model.send(("end", self.id, self._partial), self.generation)
        self._partial = ""

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self.model.cancel(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def has_words(self) -> bool:
        return self._any_word

    @property
    def words_waiting(self) -> int:
        """Entries queued and not taken up: the child's count at its last report plus the words sent since
        (a count for pacing: a word that makes no entry is counted until the next report)."""
        return self.waiting + self._words_sent

    @property
    def done(self) -> bool:
        return self._cancelled or self.finished or self.lost

    def text_until(self, seconds: float) -> str:
        return " ".join(word for word, start in word_times_of(self.transcript, self.emitted) if start < seconds)

    def report(self, state: dict) -> None:
        """The child's account of this turn at the end of a produce call (model thread)."""
        took = state["taken"] > self.taken
        self.waiting, self.taken, self._words_sent = state["waiting"], state["taken"], 0
        self.waits_for_text, self.finished = state["waits_for_text"], state["finished"]
        self.emitted = state["emitted"]
        self.transcript.extend(state["transcript"])
        if took and self.on_words_taken is not None:
            self.on_words_taken()


class TtsProcess(ChildBacked):
    """`TtsEngineModel` served by a child process, with the same calls for the cascade (a `SpeechModel`)."""

    def __init__(self, spec: str, slots: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 voice: str | None = None, threads: int | None = None, *, wait: bool = True):
        """`wait=False` only launches the child (the server loads its other models meanwhile); `wait_ready()` then."""
        self.spec, self.slots = spec, slots
        self.restarts = 0
        self.stats: dict[str, int] = {}        # the child's TtsEngineModel.stats as of the last produce call
        self._ids = itertools.count()
        self._send_lock = threading.Lock()     # text and cancels come from the loop, produce from the model thread
        self._turns_lock = threading.Lock()
        self._forgotten: collections.deque[tuple[int, int]] = collections.deque()   # dropped turns (finalizers)
        self._closing = False
        self._held: set[int] = set()           # turns holding a slot in the child (as far as we know)
        self._turns: weakref.WeakValueDictionary[int, RemoteTtsTurn] = weakref.WeakValueDictionary()
        self._generation = 0                   # which child: turns of an older one are lost
        self._conn: Connection | None = None   # the live child's pipe (None while there is none)
        self._cut = context().Event()
        self.child = ChildModel("the speech synthesiser's process", serve_tts,
                                (self._cut, spec, slots, device, str(dtype), voice, threads or torch.get_num_threads()))
        self.child.launch()
        self.default_voice = ""
        self._voices: dict[str, Path] = {}
        self._lookahead = 0
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        info = self._ready()
        self.default_voice = info["default_voice"]
        self._voices = {name: Path(path) for name, path in info["voices"].items()}
        self._lookahead = info["lookahead_words"]
        self.stats = info["stats"]

    # ---- the child's life -----------------------------------------------------------------------

    def _ready(self) -> dict:
        try:
            kind, payload = self.child.ready()
        except ChildModelError as exc:
            raise TtsProcessError(f"{exc}: {self.spec}; run with --tts-process off to see the error here") from None
        if kind == "unknown_voice":
            from .tts import UnknownVoice

            raise UnknownVoice(payload)
        if kind != "ready":
            raise TtsProcessError(f"the speech synthesiser's process could not load {self.spec}:\n{payload}")
        with self._send_lock:
            self._conn = self.child.conn
            self._generation += 1
        return payload

    def _restart(self) -> None:
        """A new child, on a thread of its own (loading takes seconds): the loop goes on meanwhile, and new
        turns are refused until it is ready."""
        began = time.monotonic()
        try:
            self.child.launch()
            self._ready()
        except Exception:
            log.exception("the speech synthesiser's process could not be restarted; cascade turns are refused")
            return
        self.restarts += 1
        log.warning("the speech synthesiser's process was restarted (pid %s, %.1f s, restart %d)",
                    self.pid, time.monotonic() - began, self.restarts)

    def _lost(self) -> int | None:
        """The child is gone: its turns are over, and a new one is started."""
        with self._send_lock:
            self._conn = None
            code = self.child.lost()
        with self._turns_lock:
            for turn in list(self._turns.values()):
                turn.lost = True
            self._turns.clear()
            self._held.clear()
        if not self._closing:
            threading.Thread(target=self._restart, name="tts-restart", daemon=True).start()
        return code

    def health(self) -> dict:
        return {**super().health(), **self.stats}

    def close(self) -> None:
        self._closing = True
        with self._send_lock:
            self._conn = None
            self.child.close(("close",))

    # ---- what the cascade calls -------------------------------------------------------------------

    @property
    def lookahead_words(self) -> int:
        return self._lookahead

    def available_voices(self) -> list[str]:
        return sorted(self._voices)

    def voice_path(self, voice: str) -> Path:
        from .tts import UnknownVoice
        from .tts_voices import shown

        path = self._voices.get(voice)
        if path is None:
            raise UnknownVoice(f"unknown voice {voice!r}; available: {shown(sorted(self._voices))}")
        return path

    def start_turn(self, voice: str | None = None, seed: int | None = None, top_k: int | None = None) -> RemoteTtsTurn:
        from .tts import TtsCapacity

        voice = voice or self.default_voice
        self.voice_path(voice)
        if self._conn is None:
            raise TtsCapacity("speech synthesis is restarting after its process exited; try again in a few seconds")
        with self._send_lock, contextlib.suppress(OSError):   # a dead child: the next produce call says so
            self._free_forgotten()
        with self._turns_lock:
            if len(self._held) >= self.slots:
                raise TtsCapacity(f"all {self.slots} TTS slots are speaking")
            turn = RemoteTtsTurn(self, next(self._ids), voice, seed, self._generation)
            self._held.add(turn.id)
            self._turns[turn.id] = turn
        self.send(("start", turn.id, voice, seed, top_k), turn.generation)
        return turn

    def send(self, message: tuple, generation: int) -> None:
        """To the child that holds the turn; nothing when that child is gone (its turns are over)."""
        with self._send_lock:
            if self._conn is None:
                return
            try:
                self._free_forgotten()
                if generation == self._generation:
                    self._conn.send(message)
            except OSError:
                pass                               # the next produce call finds the child dead

    def _free_forgotten(self) -> None:
        """With the send lock held: the slots of dropped turns are freed in the child."""
        while self._forgotten:
            turn_id, held_by = self._forgotten.popleft()
            with self._turns_lock:
                held = turn_id in self._held
                self._held.discard(turn_id)
            if held and held_by == self._generation and self._conn is not None:
                self._conn.send(("cancel", turn_id))

    def cancel(self, turn: RemoteTtsTurn) -> None:
        with self._turns_lock:
            self._held.discard(turn.id)
        self.send(("cancel", turn.id), turn.generation)

    def forget(self, turn_id: int, generation: int) -> None:
        """A turn object was dropped: its slot in the child is freed with the next message, as a dropped
        `TtsTurn` frees its own. (This runs wherever the garbage collector runs, even inside a `send`: it
        only queues.)"""
        self._forgotten.append((turn_id, generation))

    def produce(self, turns: list[RemoteTtsTurn], frames_each: int = 2,
                stop: tp.Callable[[], bool] | None = None) -> dict[RemoteTtsTurn, list[TtsFrame]]:
        """Model thread: one request to the child; while it steps, `stop()` is watched and passed on."""
        out: dict[RemoteTtsTurn, list[TtsFrame]] = {turn: [] for turn in turns}
        lost = [turn for turn in turns if turn.lost or turn.generation != self._generation]
        if lost:
            for turn in lost:
                turn.lost = True
            raise TtsProcessError("the speech synthesiser's process that held these turns exited")
        asked = [turn.id for turn in turns if not turn.done]
        if not asked:
            return out
        conn = self._conn
        if conn is None:
            raise TtsProcessError("the speech synthesiser's process is gone")
        self._cut.clear()
        self.send(("produce", asked, frames_each), self._generation)
        try:
            while not conn.poll(POLL_S):
                if stop is not None and not self._cut.is_set() and stop():
                    self._cut.set()
            kind, payload = conn.recv()
        except (EOFError, OSError):
            code = self._lost()
            raise TtsProcessError(f"the speech synthesiser's process exited (code {code}); the next turn starts "
                                  "a new one") from None
        if kind != "ok":
            raise TtsProcessError(f"the speech synthesiser failed in its process:\n{payload}")
        payload, self.stats = payload["turns"], payload["stats"]
        by_id = {turn.id: turn for turn in turns}
        for turn_id, state in payload.items():
            turn = by_id[turn_id]
            if state.get("failed"):
                log.error("the speech synthesiser's process could not start turn %d (its log says why)", turn_id)
            out[turn] = [TtsFrame(pcm, index) for pcm, index in state["frames"] if not turn.cancelled]
            turn.report(state)
            if turn.finished:
                with self._turns_lock:
                    self._held.discard(turn.id)
        return out
