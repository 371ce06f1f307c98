"""Who is speaking, frame by frame: voice activity (session and duplex) and user turn boundaries (cascade).

Both read a frame's loudness once measured (`UserFrame.level_dbfs`), never the samples again.
`ActivityDetector` answers "is this voice active now?" with a short hangover. `EndOfTurnDetector`
decides user turns: energy always, an STT's pause head when it has one.

Random-weight models cannot decide end of turn, and real ones sometimes hesitate: the energy rule
(speech, then `silence_ms` of quiet) always works on real speech; a pause probability from the STT
(Kyutai's semantic end-of-turn head) above `pause_threshold` ends the turn sooner, once the user
has been quiet for at least `min_pause_ms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..audio import FRAME_MS


@dataclass
class TurnEvent:
    kind: str       # "speech_start" or "turn_end"
    start_ms: int   # first loud frame of the turn
    end_ms: int     # end of the last loud frame (for "turn_end")


class ActivityDetector:
    """Energy-based voice activity, one decision per frame: the one rule every detector here uses.

    `update` returns "start" once `min_speech_frames` loud frames in a row have been heard, "end" after
    `hangover_frames` quiet frames (or sooner, from `end_after` quiet frames, when the caller has another
    reason to believe the speaker is done), None otherwise. Cheap and model-free: it works on real
    speech and on random-weight babble alike.
    """

    def __init__(self, threshold_dbfs: float = -45.0, hangover_frames: int = 5, min_speech_frames: int = 1):
        self.threshold_dbfs = threshold_dbfs
        self.hangover_frames = hangover_frames
        self.min_speech_frames = min_speech_frames
        self.reset()

    def reset(self) -> None:
        self.active = False
        self.loud = False      # whether the last frame was above the threshold
        self.loud_run = 0      # loud frames in a row, up to the last one
        self.quiet_run = 0     # quiet frames in a row while active

    def update(self, level_dbfs: float, end_after: int | None = None) -> str | None:
        """One frame's loudness (`UserFrame.level_dbfs`, or `rms_dbfs` of assistant audio)."""
        self.loud = level_dbfs > self.threshold_dbfs
        if self.loud:
            self.loud_run += 1
            self.quiet_run = 0
            if not self.active and self.loud_run >= self.min_speech_frames:
                self.active = True
                return "start"
            return None
        self.loud_run = 0
        if not self.active:
            return None
        self.quiet_run += 1
        if self.quiet_run >= self.hangover_frames or (end_after is not None and self.quiet_run >= end_after):
            self.active = False
            return "end"
        return None


class EndOfTurnDetector:
    """User turns on the conversation's clock: `ActivityDetector`'s rule with a turn's thresholds
    (speech for `min_speech_ms`, silence for `silence_ms`), ended sooner by a confident pause head."""

    def __init__(self, threshold_dbfs: float = -45.0, silence_ms: float = 640.0, min_speech_ms: float = 160.0,
                 pause_threshold: float | None = 0.6, min_pause_ms: float = 160.0):
        self.voice = ActivityDetector(threshold_dbfs, hangover_frames=max(1, round(silence_ms / FRAME_MS)),
                                      min_speech_frames=max(1, round(min_speech_ms / FRAME_MS)))
        self.pause_threshold = pause_threshold
        self.min_pause_frames = max(1, round(min_pause_ms / FRAME_MS))
        self.reset()

    def reset(self) -> None:
        self.voice.reset()
        self.frame_index = 0
        self._turn_start = 0
        self._last_loud_end = 0

    @property
    def in_turn(self) -> bool:
        return self.voice.active

    @property
    def turn_start_ms(self) -> int:
        return self._turn_start

    def update(self, level_dbfs: float, pause_prob: float = math.nan) -> TurnEvent | None:
        """One 80 ms frame of user audio, by its loudness (and the STT's pause probability for it, if any)."""
        index = self.frame_index
        self.frame_index += 1
        paused = self.pause_threshold is not None and not math.isnan(pause_prob) and pause_prob >= self.pause_threshold
        change = self.voice.update(level_dbfs, end_after=self.min_pause_frames if paused else None)
        if self.voice.loud:
            self._last_loud_end = (index + 1) * FRAME_MS
        if change == "start":
            self._turn_start = (index + 1 - self.voice.loud_run) * FRAME_MS
            return TurnEvent("speech_start", self._turn_start, self._last_loud_end)
        if change == "end":
            return TurnEvent("turn_end", self._turn_start, self._last_loud_end)
        return None
