"""`duplex eval --offline`: scenarios fed to a batched duplex model as fast as its step allows, no socket.

Each scenario is one row of the batch: the frames the server would hand the model (the client's and the
server's codecs replayed, `wire.uplink`), one per step, with nothing else between steps; a row whose
scenario ends takes the next one at the next step (it joins with a reset, as a new conversation takes a
freed slot). The model's output frames go back through the codecs (`wire.downlink`) onto the scenario's
audio clock: output frame k answers input frame k, as in real time, so the recording is the real-time
path's `--clock audio` recording sample for sample, and scores the same.

Why the model directly and not the engine's `BatchScheduler`: the scheduler exists to pace live
conversations (frames arrive in real time, a tick waits a little for stragglers, a queue too long
drops frames). Here every frame is known up front; a full batch every step is what the scheduler would
do with frames always waiting, without its clock. What the engine adds to a step's audio (an interrupt's
forced silence) never happens in an eval.
"""

from __future__ import annotations

import collections
import typing as tp
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from ..audio import FRAME_SAMPLES
from .wire import downlink, on_audio_clock, uplink


class FrameModel(tp.Protocol):
    """The seam between offline evaluation and a batched duplex model: `rows` conversations stepped together,
    each in its own row, a row's output frame k answering its input frame k."""

    rows: int

    def start(self, row: int, config: dict) -> None:
        """The row's next step begins a new conversation (state wiped; sampling set from `config`, the keys
        of a conversation's `start` config that the model takes: seed, temperatures, top-k)."""

    def step(self, pcm: np.ndarray, active: np.ndarray) -> np.ndarray:
        """pcm [R, F] float32, active [R] bool (rows without a frame this step keep their state)
        -> the assistant's frames [R, F] (silence before the model's delay, and for inactive rows)."""


class InlineExecutor:
    """Runs the codec work where it is asked for (pcm16: too cheap to ship to another process)."""

    def submit(self, fn: tp.Callable[..., tp.Any], *args: tp.Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


@dataclass
class OfflineRun:
    recordings: list[np.ndarray]     # per scenario [input + tail samples], on its audio clock
    frames: list[int]                # model frames per scenario (the uplink may hold back the last one)
    steps: int = 0                   # batched steps taken
    row_steps: int = 0               # rows that had a frame, summed over the steps


@dataclass
class _Row:
    index: int                       # the scenario's
    frames: np.ndarray               # [M, F] what the model hears
    position: int = 0
    out: list[np.ndarray] = field(default_factory=list)


def run_offline(model: FrameModel, inputs: tp.Sequence[np.ndarray], *, config: dict, codec: str = "opus",
                codec_pool: Executor | InlineExecutor | None = None,
                progress: tp.Callable[[int], None] | None = None) -> OfflineRun:
    """Every input [N_i] float32 24 kHz (tail silence included) through `model`, `model.rows` at a time.

    `codec_pool` runs the uplinks (a window ahead of the rows) and downlinks; `progress(i)` is called as
    scenario i's model frames are done."""
    pool = codec_pool or InlineExecutor()
    n = len(inputs)
    waiting = collections.deque(range(n))
    ahead: dict[int, Future] = {}              # uplinks started, by scenario
    downs: dict[int, Future] = {}
    frames_of = [0] * n
    rows: list[_Row | None] = [None] * model.rows
    run = OfflineRun(recordings=[], frames=frames_of)

    def prefetch() -> None:                    # a window of 2 R uplinks: memory stays bounded on big sets
        for i in list(waiting)[: 2 * model.rows]:
            if i not in ahead:
                ahead[i] = pool.submit(uplink, inputs[i], codec)

    def finish(row: _Row) -> None:
        out = np.stack(row.out) if row.out else np.zeros((0, FRAME_SAMPLES), np.float32)
        downs[row.index] = pool.submit(downlink, out, codec)
        frames_of[row.index] = len(row.out)
        if progress is not None:
            progress(row.index)

    pcm = np.zeros((model.rows, FRAME_SAMPLES), dtype=np.float32)
    active = np.zeros(model.rows, dtype=bool)
    while True:
        prefetch()
        for r in range(model.rows):            # free rows take the next scenarios (one with no frame ends at once)
            while rows[r] is None and waiting:
                if any(rows) and not ahead[waiting[0]].done():
                    break                      # its uplink is still running: step the others meanwhile
                i = waiting.popleft()
                joining = _Row(i, ahead.pop(i).result())
                if len(joining.frames):
                    model.start(r, config)
                    rows[r] = joining
                else:
                    finish(joining)
        if not any(rows):
            break
        pcm[:] = 0.0
        active[:] = False
        for r, stepping in enumerate(rows):
            if stepping is not None:
                pcm[r] = stepping.frames[stepping.position]
                active[r] = True
        out = model.step(pcm, active)
        run.steps += 1
        run.row_steps += int(active.sum())
        for r, row in enumerate(rows):
            if row is None:
                continue
            row.out.append(out[r].copy())
            row.position += 1
            if row.position == len(row.frames):
                finish(row)
                rows[r] = None
    run.recordings = [on_audio_clock(downs[i].result(), _sent_samples(inputs[i])) for i in range(n)]
    return run


def _sent_samples(pcm: np.ndarray) -> int:
    """The recording is as long as the scenario (input + tail), as the real-time path cuts it."""
    return int(np.asarray(pcm).reshape(-1).size)
