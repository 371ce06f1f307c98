"""Who is speaking, frame by frame: voice activity (session and duplex) and user turn boundaries (cascade).

Both read a frame's loudness once measured (`UserFrame.level_dbfs`), never the samples again.
`ActivityDetector` answers "is this voice active now?" with a short hangover. `EndOfTurnDetector`
decides user turns by one of two rules, chosen once per server (`server/loading.py`):

- **energy** (speech, then `silence_ms` of quiet): model-free, it works on real speech with any STT and
  on random-weight babble; the rule for STTs without a pause head and for the tiny preset;
- **pause** (`PauseRule`, Kyutai's semantic end of turn, as unmute reads it): the STT's pause probability,
  smoothed by an exponential moving average, ends the turn once it reaches `end_threshold` after at least
  `min_pause_ms` of quiet (the energy rule's `silence_ms` still ends a turn the head never calls), and,
  while the assistant speaks, a fall below `barge_in_threshold` is a barge-in, except in the first
  `grace_ms` of the assistant's speech (its own voice in the user's microphone must not cut it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..audio import FRAME_MS


@dataclass
class TurnEvent:
    kind: str       # "speech_start", "turn_end" or "barge_in" (the pause rule, while the assistant speaks)
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


@dataclass(frozen=True)
class PauseRule:
    """The semantic rule's settings (`duplex serve --pause-*`, `--barge-in-grace-ms`, `--min-pause-ms`)."""

    ema: float = 0.5                  # weight of the newest probability in the moving average (1: none)
    end_threshold: float = 0.6        # the average at or above it, after min_pause_ms of quiet: end of turn
    barge_in_threshold: float = 0.4   # below it while the assistant speaks (after grace_ms): barge-in
    min_pause_ms: float = 160.0
    grace_ms: float = 3000.0          # from the assistant's first frame: no barge-in by the pause head


class EndOfTurnDetector:
    """User turns on the conversation's clock: `ActivityDetector`'s rule with a turn's thresholds
    (speech for `min_speech_ms`, silence for `silence_ms`), and with a `PauseRule` the STT's smoothed
    pause probability (`observe_pause`, once per STT step) ends turns sooner and calls barge-ins."""

    def __init__(self, threshold_dbfs: float = -45.0, silence_ms: float = 640.0, min_speech_ms: float = 160.0,
                 pause: PauseRule | None = None):
        self.voice = ActivityDetector(threshold_dbfs, hangover_frames=max(1, round(silence_ms / FRAME_MS)),
                                      min_speech_frames=max(1, round(min_speech_ms / FRAME_MS)))
        self.pause = pause
        self.min_pause_frames = max(1, round((pause.min_pause_ms if pause else 160.0) / FRAME_MS))
        self.grace_frames = round(pause.grace_ms / FRAME_MS) if pause else 0
        self.reset()

    def reset(self) -> None:
        self.voice.reset()
        self.frame_index = 0
        self._turn_start = 0
        self._last_loud_end = 0
        self.pause_avg: float | None = None   # the smoothed pause probability; None before the first one
        self._speaking_frames = 0             # user frames since the assistant's speech began (0: not speaking)
        self._barged = False                  # a barge-in was called in this assistant speech

    @property
    def in_turn(self) -> bool:
        return self.voice.active

    @property
    def turn_start_ms(self) -> int:
        return self._turn_start

    def observe_pause(self, pause_prob: float) -> None:
        """One STT step's pause probability (NaN, without a frame or a head, is no news)."""
        if self.pause is None or math.isnan(pause_prob):
            return
        avg = self.pause_avg
        self.pause_avg = pause_prob if avg is None else avg + self.pause.ema * (pause_prob - avg)

    def update(self, level_dbfs: float, pause_prob: float = math.nan,
               assistant_speaking: bool = False) -> TurnEvent | None:
        """One 80 ms frame of user audio, by its loudness; `pause_prob`, if given, is observed first;
        `assistant_speaking`: whether the assistant's audio is playing (for the barge-in rule)."""
        self.observe_pause(pause_prob)
        index = self.frame_index
        self.frame_index += 1
        rule, avg = self.pause, self.pause_avg
        if assistant_speaking:
            self._speaking_frames += 1
        else:
            self._speaking_frames, self._barged = 0, False
        paused = rule is not None and avg is not None and avg >= rule.end_threshold
        change = self.voice.update(level_dbfs, end_after=self.min_pause_frames if paused else None)
        if self.voice.loud:
            self._last_loud_end = (index + 1) * FRAME_MS
        if change == "start":
            self._turn_start = (index + 1 - self.voice.loud_run) * FRAME_MS
            return TurnEvent("speech_start", self._turn_start, self._last_loud_end)
        if change == "end":
            return TurnEvent("turn_end", self._turn_start, self._last_loud_end)
        if (rule is not None and avg is not None and avg < rule.barge_in_threshold and not self._barged
                and self._speaking_frames > self.grace_frames):
            self._barged = True
            return TurnEvent("barge_in", self._turn_start, self._last_loud_end)
        return None
