"""Converts Full-Duplex-Bench's released data (v1.0, and v1.5's user-interruption subset) into a scenario set.

The layout assumed is the one its repository documents (`v1_v1.5/dataset/README.md`) and its evaluation
scripts read (`v1_v1.5/evaluation/eval_*.py`): one folder per sample holding `input.wav` and a task
annotation, times in seconds:

| sample folder holds | becomes |
|---|---|
| `pause.json` `[{"text": "[PAUSE]", "timestamp": [s, e]}, ...]` | `pause_handling`, each `[s, e]` a pause |
| `turn_taking.json` `[{"timestamp": [s, e]}]` | `turn_taking`, `turn_end_s` = the first `s` (FDB scores from `timestamp[0]`) |
| `interrupt.json` `[{"context", "interrupt", "timestamp": [s, e]}]` | `interruption` = `[s, e]` |
| `metadata.json` `{"timestamps": [s, e]}` under `user_interruption` (v1.5) | `interruption` = `[s, e]` |
| only `input.wav`, in a folder whose path names `backchannel` (icc_backchannel) | `backchannel` without cues |

(FDB's human backchannel timing reference, `icc_gt_distribution.json`, is not part of the samples, so a
converted backchannel scenario gets no JSD.)

v1.5's other subsets (user backchannel, talking to others, background speech) ask other questions than
the four kinds here and are skipped, each with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..audio import SAMPLE_RATE
from .scenarios import Scenario, ScenarioError, read_audio, save_scenario


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ScenarioError(f"{path}: not JSON ({exc})") from None


def _span(value: object, where: Path) -> tuple[float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ScenarioError(f"{where}: expected a [start, end] timestamp, got {value!r}")
    return float(value[0]), float(value[1])


def _first(data: object, where: Path) -> dict:
    if not (isinstance(data, list) and data and isinstance(data[0], dict)):
        raise ScenarioError(f"{where}: expected a list of objects with a 'timestamp'")
    return data[0]


def convert_sample(folder: Path, scenario_id: str) -> Scenario | str:
    """The scenario of one FDB sample folder, or the reason it is skipped."""
    pcm_duration = None

    def duration() -> float:
        nonlocal pcm_duration
        if pcm_duration is None:
            pcm_duration = read_audio(folder / "input.wav").size / SAMPLE_RATE
        return pcm_duration

    source = f"Full-Duplex-Bench {folder}"
    if (folder / "pause.json").exists():
        data = _read(folder / "pause.json")
        if not isinstance(data, list):
            raise ScenarioError(f"{folder / 'pause.json'}: expected a list of pauses")
        pauses = [_span(item.get("timestamp") if isinstance(item, dict) else None, folder / "pause.json") for item in data]
        return Scenario(kind="pause_handling", duration_s=duration(), pauses=pauses, id=scenario_id, source=source)
    if (folder / "turn_taking.json").exists():
        item = _first(_read(folder / "turn_taking.json"), folder / "turn_taking.json")
        start, _ = _span(item.get("timestamp"), folder / "turn_taking.json")
        return Scenario(kind="turn_taking", duration_s=duration(), turn_end_s=start, id=scenario_id, source=source)
    if (folder / "interrupt.json").exists():
        item = _first(_read(folder / "interrupt.json"), folder / "interrupt.json")
        span = _span(item.get("timestamp"), folder / "interrupt.json")
        text = f"{item.get('context', '')} | {item.get('interrupt', '')}"
        return Scenario(kind="interruption", duration_s=duration(), interruption=span, text=text, id=scenario_id, source=source)
    if (folder / "metadata.json").exists():
        if "user_interruption" not in folder.as_posix():
            return "a v1.5 overlap subset other than user_interruption (not one of the four kinds)"
        data = _read(folder / "metadata.json")
        if not isinstance(data, dict):
            raise ScenarioError(f"{folder / 'metadata.json'}: expected an object with 'timestamps'")
        span = _span(data.get("timestamps"), folder / "metadata.json")
        return Scenario(kind="interruption", duration_s=duration(), interruption=span,
                        text=str(data.get("current_turn_text", "")), id=scenario_id, source=source)
    if "backchannel" in folder.as_posix():
        return Scenario(kind="backchannel", duration_s=duration(), id=scenario_id, source=source)
    return "no task annotation (pause.json, turn_taking.json, interrupt.json, metadata.json) and not a backchannel folder"


def convert_fdb(source: Path, dest: Path) -> tuple[list[Scenario], list[tuple[Path, str]]]:
    """Every sample folder (one holding input.wav) under `source` into the set folder `dest`.

    Returns the scenarios written and the (folder, reason) of every sample skipped."""
    if not source.is_dir():
        raise ScenarioError(f"{source} is not a folder (give the unpacked Full-Duplex-Bench data, e.g. .../v1_0)")
    written, skipped = [], []
    for wav in sorted(source.rglob("input.wav")):
        folder = wav.parent
        scenario_id = "-".join(folder.relative_to(source).parts) or folder.name
        try:
            result = convert_sample(folder, scenario_id)
            if isinstance(result, str):
                skipped.append((folder, result))
                continue
            save_scenario(dest, result, read_audio(wav))
        except ScenarioError as exc:  # one bad sample is reported, the others still convert
            skipped.append((folder, str(exc)))
            continue
        written.append(result)
    if not written:
        raise ScenarioError(f"no Full-Duplex-Bench sample found under {source} (folders with input.wav and a task annotation)")
    return written, skipped
