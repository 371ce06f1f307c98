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
    """Energy-based speech activity with a hangover, one decision per frame.

    `update` returns "start" on the first active frame, "end" after `hangover_frames` quiet frames,
    None otherwise. Cheap and model-free: it works on real speech and on random-weight babble alike.
    """

    def __init__(self, threshold_dbfs: float = -45.0, hangover_frames: int = 5):
        self.threshold_dbfs = threshold_dbfs
        self.hangover_frames = hangover_frames
        self.active = False
        self.loud = False  # whether the last frame was above the threshold
        self._quiet = 0

    def update(self, level_dbfs: float) -> str | None:
        """One frame's loudness (`UserFrame.level_dbfs`, or `rms_dbfs` of assistant audio)."""
        loud = self.loud = level_dbfs > self.threshold_dbfs
        if loud:
            self._quiet = 0
            if not self.active:
                self.active = True
                return "start"
            return None
        if self.active:
            self._quiet += 1
            if self._quiet >= self.hangover_frames:
                self.active = False
                self._quiet = 0
                return "end"
        return None

    def reset(self) -> None:
        self.active = False
        self._quiet = 0



class EndOfTurnDetector:
    def __init__(self, threshold_dbfs: float = -45.0, silence_ms: float = 640.0, min_speech_ms: float = 160.0,
                 pause_threshold: float | None = 0.6, min_pause_ms: float = 160.0):
        self.threshold_dbfs = threshold_dbfs
        self.silence_frames = max(1, round(silence_ms / FRAME_MS))
        self.min_speech_frames = max(1, round(min_speech_ms / FRAME_MS))
        self.pause_threshold = pause_threshold
        self.min_pause_frames = max(1, round(min_pause_ms / FRAME_MS))
        self.reset()

    def reset(self) -> None:
        self.frame_index = 0
        self.in_turn = False
        self._loud_run = 0
        self._quiet_run = 0
        self._turn_start = 0
        self._last_loud_end = 0

    @property
    def turn_start_ms(self) -> int:
        return self._turn_start

    def update(self, level_dbfs: float, pause_prob: float = math.nan) -> TurnEvent | None:
        """One 80 ms frame of user audio, by its loudness (and the STT's pause probability for it, if any)."""
        index = self.frame_index
        self.frame_index += 1
        loud = level_dbfs > self.threshold_dbfs
        if loud:
            self._loud_run += 1
            self._quiet_run = 0
            self._last_loud_end = (index + 1) * FRAME_MS
            if not self.in_turn and self._loud_run >= self.min_speech_frames:
                self.in_turn = True
                self._turn_start = (index + 1 - self._loud_run) * FRAME_MS
                return TurnEvent("speech_start", self._turn_start, self._last_loud_end)
            return None
        self._loud_run = 0
        if not self.in_turn:
            return None
        self._quiet_run += 1
        semantic_end = (self.pause_threshold is not None and not math.isnan(pause_prob)
                        and pause_prob >= self.pause_threshold and self._quiet_run >= self.min_pause_frames)
        if self._quiet_run >= self.silence_frames or semantic_end:
            self.in_turn = False
            return TurnEvent("turn_end", self._turn_start, self._last_loud_end)
        return None
