"""A scenario: the user's audio plus the times that say what a good system would do with it.

On disk a scenario set is a folder with one folder per scenario (the layout of Full-Duplex-Bench):

    SET/<id>/input.wav       the user's audio, any rate (read as 24 kHz mono)
    SET/<id>/scenario.json   the annotations below; times in seconds from the first sample of input.wav

`kind` says which behaviour it probes, and which annotation it needs (docs/eval.md):

| kind | annotation | the question |
|---|---|---|
| `pause_handling` | `pauses` [[start, end], ...] | does the system take the turn while the user pauses mid-turn? |
| `turn_taking` | `turn_end_s` | does it answer once the user's turn is over, and how soon? |
| `interruption` | `interruption` [start, end] | does it yield when the user talks over it, how fast; does it answer? |
| `backchannel` | `backchannel_cues` [t, ...] (optional) | short "mm-hm"s while the user talks, without taking over? |

`user_speech` (optional) lists where the user speaks; `text` and `source` are for people.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


from ..audio import SAMPLE_RATE, read_wav_mono24k, write_wav

KINDS = ("pause_handling", "turn_taking", "interruption", "backchannel")
INPUT_WAV = "input.wav"
ANNOTATIONS = "scenario.json"


class ScenarioError(ValueError):
    """A scenario folder or annotation that cannot be used; the message names the file and the fix."""


@dataclass
class Scenario:
    id: str
    kind: str
    duration_s: float                                   # length of input.wav
    user_speech: list[tuple[float, float]] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)      # pause_handling
    turn_end_s: float | None = None                     # turn_taking (also: the context turn of an interruption)
    interruption: tuple[float, float] | None = None     # interruption: the user's barge-in [start, end]
    backchannel_cues: list[float] = field(default_factory=list)          # backchannel: good moments for one
    text: str = ""
    source: str = ""

    def validate(self) -> "Scenario":
        where = f"scenario {self.id!r}"
        if self.kind not in KINDS:
            raise ScenarioError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        needs = {"pause_handling": bool(self.pauses), "turn_taking": self.turn_end_s is not None,
                 "interruption": self.interruption is not None, "backchannel": True}
        if not needs[self.kind]:
            field_name = {"pause_handling": "pauses", "turn_taking": "turn_end_s", "interruption": "interruption"}[self.kind]
            raise ScenarioError(f"{where}: a {self.kind} scenario needs {field_name!r} in its {ANNOTATIONS}")
        spans = [*self.pauses, *self.user_speech, *([self.interruption] if self.interruption else [])]
        for start, end in spans:
            if not 0 <= start <= end <= self.duration_s + 1e-6:
                raise ScenarioError(f"{where}: span [{start}, {end}] is not inside 0..{self.duration_s:.3f} s")
        points = [*self.backchannel_cues, *([self.turn_end_s] if self.turn_end_s is not None else [])]
        if any(not 0 <= t <= self.duration_s + 1e-6 for t in points):
            raise ScenarioError(f"{where}: a time is outside 0..{self.duration_s:.3f} s")
        return self

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> "Scenario":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ScenarioError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        try:
            scenario = cls(**data)
        except TypeError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        scenario.user_speech = [(float(s), float(e)) for s, e in scenario.user_speech]
        scenario.pauses = [(float(s), float(e)) for s, e in scenario.pauses]
        if scenario.interruption is not None:
            start, end = scenario.interruption
            scenario.interruption = (float(start), float(end))
        scenario.backchannel_cues = [float(t) for t in scenario.backchannel_cues]
        return scenario


def read_audio(path: Path) -> np.ndarray:
    """Any audio file sphn reads, as 24 kHz mono float32, not moved in time (see `audio.resample`)."""
    return read_wav_mono24k(str(path))


def save_scenario(folder: Path, scenario: Scenario, pcm: np.ndarray) -> None:
    """Writes SET/<id>/input.wav (24 kHz) and SET/<id>/scenario.json."""
    scenario.validate()
    path = folder / scenario.id
    path.mkdir(parents=True, exist_ok=True)
    write_wav(str(path / INPUT_WAV), pcm)
    (path / ANNOTATIONS).write_text(json.dumps(scenario.to_json(), indent=2) + "\n")


def load_set(folder: Path) -> list[tuple[Scenario, np.ndarray]]:
    """Every scenario of a set folder, sorted by id, with its input audio (24 kHz mono float32)."""
    if not folder.is_dir():
        raise ScenarioError(f"{folder} is not a folder (a scenario set is a folder of <id>/{INPUT_WAV} + <id>/{ANNOTATIONS})")
    found = []
    for path in sorted(p for p in folder.iterdir() if (p / ANNOTATIONS).exists()):
        where = str(path / ANNOTATIONS)
        try:
            data = json.loads((path / ANNOTATIONS).read_text())
        except ValueError as exc:
            raise ScenarioError(f"{where}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ScenarioError(f"{where}: must hold one JSON object")
        if not (path / INPUT_WAV).exists():
            raise ScenarioError(f"{path}: {ANNOTATIONS} without {INPUT_WAV}")
        pcm = read_audio(path / INPUT_WAV)
        data.setdefault("id", path.name)
        data.setdefault("duration_s", pcm.size / SAMPLE_RATE)
        found.append((Scenario.from_json(data, where).validate(), pcm))
    if not found:
        raise ScenarioError(f"{folder} holds no scenario (no <id>/{ANNOTATIONS}); generate one with `duplex eval --out DIR`")
    return found
