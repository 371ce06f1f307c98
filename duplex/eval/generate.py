"""Generated scenario sets: espeak-ng speech laid out on a timeline with silences at chosen places, so
every annotation (pause, turn end, barge-in, backchannel cue) is known to the sample.

Each clip's own leading and trailing silence is trimmed before it is placed, so `user_speech` is exact.
Voices, speaking rates, texts and silence lengths are drawn from a seeded generator: the same seed
gives the same set.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import typing as tp
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from .scenarios import KINDS, Scenario, read_audio, save_scenario

VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f2")
RATES_WPM = (150, 165, 180)
AFTER_S = 3.0            # silence after the last user speech: time for the system to answer

PAUSE_TEXTS = [("I was thinking that we could go to the", "market tomorrow morning, before it gets busy."),
               ("So the thing about my brother is that", "he never calls me back on time."),
               ("What I would really like to know is", "how long it takes to learn the piano.")]
TURN_TEXTS = ["What is the capital of France?", "Can you recommend a good book for a long flight?",
              "How do I make a simple tomato soup?"]
INTERRUPT_TEXTS = [("Tell me a long story about the sea, please.", "Wait, tell me about mountains."),
                   ("Explain how a bicycle works, in detail.", "Sorry, what about a car?"),
                   ("Describe your favourite city for me.", "Hold on, what about villages?")]
BACKCHANNEL_TEXTS = [["Yesterday I went to the station,", "and the train was late again,", "so I waited for an hour,",
                      "and then it was cancelled."],
                     ["My sister moved to a new flat,", "it is close to the river,", "the rent is quite high,",
                      "but she likes it a lot."]]


def espeak(text: str, voice: str, rate_wpm: int, tmp: Path) -> np.ndarray:
    """espeak-ng speech as 24 kHz float32, its own leading and trailing silence trimmed."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is needed to generate scenarios (apt-get install espeak-ng), "
                           "or give a scenario folder with --set")
    path = tmp / "clip.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-w", str(path), text], check=True, capture_output=True)
    pcm = read_audio(path)
    voiced = np.flatnonzero(np.abs(pcm) > 1e-3)
    return pcm[voiced[0]:voiced[-1] + 1] if voiced.size else pcm


class Timeline:
    """Appends silences and clips; remembers where each clip landed (seconds)."""

    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []
        self.samples = 0
        self.speech: list[tuple[float, float]] = []

    @property
    def now(self) -> float:
        return self.samples / SAMPLE_RATE

    def silence(self, seconds: float) -> None:
        self.pieces.append(np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32))
        self.samples += self.pieces[-1].size

    def say(self, pcm: np.ndarray) -> tuple[float, float]:
        start = self.now
        self.pieces.append(np.asarray(pcm, dtype=np.float32))
        self.samples += pcm.size
        self.speech.append((round(start, 4), round(self.now, 4)))
        return self.speech[-1]

    def pcm(self) -> np.ndarray:
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, dtype=np.float32)


def _pause(rng: random.Random, speak: tp.Callable[[str], np.ndarray], n: int) -> tuple[Scenario, np.ndarray]:
    first, second = rng.choice(PAUSE_TEXTS)
    t = Timeline()
    t.silence(0.5)
    _, pause_start = t.say(speak(first))
    t.silence(rng.uniform(1.2, 2.0))
    pause_end, _ = t.say(speak(second))
    t.silence(1.0)
    return Scenario(id=f"pause-{n:02d}", kind="pause_handling", duration_s=round(t.now, 4), user_speech=t.speech,
                    pauses=[(pause_start, pause_end)], text=f"{first} ... {second}"), t.pcm()


def _turn(rng: random.Random, speak: tp.Callable[[str], np.ndarray], n: int) -> tuple[Scenario, np.ndarray]:
    text = rng.choice(TURN_TEXTS)
    t = Timeline()
    t.silence(0.5)
    _, end = t.say(speak(text))
    t.silence(AFTER_S)
    return Scenario(id=f"turn-{n:02d}", kind="turn_taking", duration_s=round(t.now, 4), user_speech=t.speech,
                    turn_end_s=end, text=text), t.pcm()


def _interrupt(rng: random.Random, speak: tp.Callable[[str], np.ndarray], n: int) -> tuple[Scenario, np.ndarray]:
    context, barge_in = rng.choice(INTERRUPT_TEXTS)
    t = Timeline()
    t.silence(0.5)
    _, context_end = t.say(speak(context))
    t.silence(rng.uniform(2.5, 3.0))   # the system answers the context turn here; the user cuts in while it speaks
    span = t.say(speak(barge_in))
    t.silence(AFTER_S)
    return Scenario(id=f"interrupt-{n:02d}", kind="interruption", duration_s=round(t.now, 4), user_speech=t.speech,
                    turn_end_s=context_end, interruption=span, text=f"{context} | {barge_in}"), t.pcm()


def _backchannel(rng: random.Random, speak: tp.Callable[[str], np.ndarray], n: int) -> tuple[Scenario, np.ndarray]:
    phrases = rng.choice(BACKCHANNEL_TEXTS)
    t = Timeline()
    t.silence(0.5)
    cues = []
    for k, phrase in enumerate(phrases):
        _, end = t.say(speak(phrase))
        if k < len(phrases) - 1:
            cues.append(end)               # a listener's "mm-hm" fits the short gap after a phrase
            t.silence(rng.uniform(0.35, 0.5))
    t.silence(1.0)
    return Scenario(id=f"backchannel-{n:02d}", kind="backchannel", duration_s=round(t.now, 4), user_speech=t.speech,
                    backchannel_cues=cues, text=" ".join(phrases)), t.pcm()


BUILDERS = {"pause_handling": _pause, "turn_taking": _turn, "interruption": _interrupt, "backchannel": _backchannel}


def generate_set(folder: Path, per_kind: int = 2, kinds: tp.Sequence[str] = KINDS, seed: int = 0) -> list[Scenario]:
    """Writes `per_kind` scenarios of each kind into `folder` (the set layout of `scenarios`)."""
    unknown = set(kinds) - set(BUILDERS)
    if unknown:
        raise ValueError(f"unknown scenario kinds {sorted(unknown)}: choose from {', '.join(KINDS)}")
    rng = random.Random(seed)
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            for n in range(per_kind):
                voice, rate = rng.choice(VOICES), rng.choice(RATES_WPM)
                scenario, pcm = BUILDERS[kind](rng, lambda text: espeak(text, voice, rate, Path(tmp)), n)  # noqa: B023
                scenario.source = f"espeak-ng -v {voice} -s {rate}"
                save_scenario(folder, scenario, pcm)
                made.append(scenario)
    return made
