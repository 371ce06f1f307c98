"""The speech synthesiser's child process (tts_process.py is the parent's side): loads `TtsEngineModel`, keeps
the real `TtsTurn`s by id, applies the parent's text, ends and cancels in order (also between the steps of a
produce call), and answers each produce call with every asked turn's frames and state."""

from __future__ import annotations

import signal
import traceback
import typing as tp
from multiprocessing.connection import Connection

import numpy as np
import torch


def serve_tts(conn: Connection, cut: tp.Any, spec: str, slots: int, device: str, dtype_name: str,
              voice: str | None, threads: int) -> None:
    """The child: loads the TTS, says "ready" (its voices, default voice, lookahead), then serves the
    parent's messages until the pipe closes. Ctrl-C is the parent's: it stops us by closing the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    from .spec import resolve_checkpoint
    from .tts import TtsEngineModel, UnknownVoice

    try:
        tts = TtsEngineModel(resolve_checkpoint(spec), slots, device,
                             getattr(torch, dtype_name.removeprefix("torch.")), voice=voice)
    except UnknownVoice as exc:
        conn.send(("unknown_voice", str(exc)))
        return
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", {"default_voice": tts.default_voice, "lookahead_words": tts.lookahead_words,
                         "stats": dict(tts.stats),
                         "voices": {name: str(tts.voice_path(name)) for name in tts.available_voices()}}))
    ChildServer(conn, cut, tts).run()


class ChildServer:
    """The child's loop: turns by id, messages applied in order, produce answered with each turn's report."""

    def __init__(self, conn: Connection, cut: tp.Any, tts: tp.Any):
        self.conn, self.cut, self.tts = conn, cut, tts
        self.turns: dict[int, tp.Any] = {}            # id -> TtsTurn
        self.reported: dict[int, int] = {}            # id -> transcript entries already sent
        self.failed: set[int] = set()                 # turns whose start failed here

    def run(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return                                 # the parent is gone
            if message[0] == "close":
                return
            if message[0] == "produce":
                try:
                    reply: tuple[str, tp.Any] = ("ok", self.produce(message[1], message[2]))
                except Exception:
                    reply = ("error", traceback.format_exc())
                self.conn.send(reply)
            else:
                self.apply(message)

    def apply(self, message: tuple) -> None:
        try:
            self._apply(message)
        except Exception:       # e.g. a start the parent thought had room: that turn ends, the child lives on
            traceback.print_exc()
            self.failed.add(message[1])

    def _apply(self, message: tuple) -> None:
        kind, turn_id = message[0], message[1]
        if kind == "start":
            _, _, voice, seed, top_k = message
            self.turns[turn_id] = self.tts.start_turn(voice, seed, top_k)
            self.reported[turn_id] = 0
            return
        turn = self.turns.get(turn_id)
        if turn is None:
            return
        if kind == "text":
            turn.push_text(message[2])
        elif kind == "end":
            if message[2]:
                turn.push_text(message[2])
            turn.end_text()
        elif kind == "cancel":
            turn.cancel()
            self._drop(turn_id)

    def _between_steps(self) -> bool:
        """produce's `stop`: apply what came meanwhile (new words, cancels, new turns), then the cut."""
        while self.conn.poll():
            message = self.conn.recv()
            if message[0] in ("produce", "close"):
                raise RuntimeError(f"unexpected {message[0]!r} during a produce call")
            self.apply(message)
        return bool(self.cut.is_set())

    def produce(self, ids: list[int], frames_each: int) -> dict:
        turns = [self.turns[i] for i in ids if i in self.turns]
        produced = self.tts.produce(turns, frames_each, stop=self._between_steps) if turns else {}
        reports = {}
        for turn_id in ids:
            turn = self.turns.get(turn_id)
            if turn is None:                           # cancelled meanwhile, or its start failed
                reports[turn_id] = {"frames": [], "waiting": 0, "taken": 0, "waits_for_text": False,
                                    "finished": True, "emitted": 0, "transcript": [],
                                    "failed": turn_id in self.failed}
                self.failed.discard(turn_id)
                continue
            gen = turn.gen
            transcript = list(gen.machine.transcript)
            reports[turn_id] = {
                "frames": [(np.asarray(frame.pcm), frame.index) for frame in produced.get(turn, [])],
                "waiting": turn.words_waiting, "taken": len(gen.machine.consumption_times),
                "waits_for_text": turn.waits_for_text, "finished": gen.finished, "emitted": gen.emitted,
                "transcript": transcript[self.reported[turn_id]:],
            }
            self.reported[turn_id] = len(transcript)
            if gen.finished:
                self._drop(turn_id)
        return {"turns": reports, "stats": dict(self.tts.stats)}

    def _drop(self, turn_id: int) -> None:
        self.turns.pop(turn_id, None)
        self.reported.pop(turn_id, None)
