"""What `duplex client` prints: live events (human or JSON lines) and the end-of-run summary."""

from __future__ import annotations

import json
import sys
import typing as tp
from dataclasses import dataclass, field

from ..stats import percentiles
from .connection import AudioChunk, DuplexClient, Event, error_text


@dataclass
class Transfer:
    """What was sent and when, for the summary and the aligned output."""

    sent_at: list[float] = field(default_factory=list)  # time.monotonic() after sending frame k
    stream_start: float | None = None  # when input sample 0 was (or was due to be) sent


# ---- summary --------------------------------------------------------------------------------------

def frame_turnaround_ms(sent_at: tp.Sequence[float], audio: tp.Sequence[AudioChunk]) -> list[float]:
    """Duplex: time from sending input frame k to receiving output frame k, in ms."""
    return [(audio[k].received_at - sent_at[k]) * 1000.0 for k in range(min(len(sent_at), len(audio)))]


def _percentiles(values: tp.Sequence[float]) -> dict[str, float] | None:
    figures = percentiles(values, (50, 90))
    return None if figures is None else {**figures, "max": round(float(max(values)), 1)}


def summarize(client: DuplexClient, transfer: Transfer, mode: str | None, duration_s: float) -> dict[str, tp.Any]:
    metrics = [e.data for e in client.events if e.type == "metrics"]
    latencies = [float(m["response_latency_ms"]) for m in metrics
                 if isinstance(m.get("response_latency_ms"), (int, float))]
    return {
        "type": "client_summary",
        "mode": mode,
        "frames_sent": len(transfer.sent_at),
        "frames_received": client.binary_messages,
        "frame_turnaround_ms": _percentiles(frame_turnaround_ms(transfer.sent_at, client.audio))
        if mode == "duplex" else None,
        "response_latency_ms": _percentiles(latencies),
        "responses": len(latencies),
        "frames_dropped": metrics[-1].get("frames_dropped") if metrics else None,
        "llm_tokens": _llm_tokens(metrics),
        "errors": sum(1 for e in client.events if e.type == "error"),
        "duration_s": round(duration_s, 2),
    }


def _llm_tokens(metrics: list[dict]) -> dict[str, int] | None:
    """The cascade LLM's tokens over every turn (its turns' `metrics` carry them); None when none did."""
    turns = [m for m in metrics if isinstance(m.get("input_tokens"), int) and isinstance(m.get("output_tokens"), int)]
    if not turns:
        return None
    return {"input": sum(m["input_tokens"] for m in turns), "output": sum(m["output_tokens"] for m in turns)}


# ---- printing -------------------------------------------------------------------------------------

class EventPrinter(tp.Protocol):
    def on_event(self, event: Event) -> None: ...
    def on_summary(self, summary: dict[str, tp.Any]) -> None: ...
    def flush(self) -> None: ...


class JsonPrinter:
    def on_event(self, event: Event) -> None:
        print(json.dumps(event.data), flush=True)

    def on_summary(self, summary: dict[str, tp.Any]) -> None:
        print(json.dumps(summary), flush=True)

    def flush(self) -> None:
        pass


class HumanPrinter:
    """Role-prefixed transcripts. On a terminal, partials rewrite one live line; otherwise only finals."""

    def __init__(self, tty: bool, out: tp.TextIO | None = None, err: tp.TextIO | None = None):
        self.tty = tty
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._live = False  # a partial line is on screen, without its newline
        self._llm_text = ""  # assistant text of the current llm_response run

    def on_event(self, event: Event) -> None:
        d = event.data
        if event.type == "ready":
            self._line(f"connected: session {d.get('session_id')}, modes {', '.join(d.get('modes', []))}, "
                       f"audio {d.get('audio', {}).get('codec')}")
        elif event.type == "partial_transcript" and self.tty:
            self._show_live(f"{d.get('role')}… {d.get('content', '')}")
        elif event.type == "final_transcript":
            self._line(f"{d.get('role')}: {d.get('content', '')}")
        elif event.type == "llm_response":
            self._llm_text += str(d.get("content", ""))
            if d.get("is_complete"):
                self.flush()
            elif self.tty:
                self._show_live(f"assistant (text)… {self._llm_text}")
        elif event.type == "error":
            self._line(f"error {error_text(d)}", self.err)

    def flush(self) -> None:
        """Prints any assistant text still pending (the turn ended or the client stopped)."""
        if self._llm_text.strip():
            self._line(f"assistant (text): {self._llm_text.strip()}")
        self._llm_text = ""

    def on_summary(self, s: dict[str, tp.Any]) -> None:
        lines = [f"--- summary ({s['mode'] or 'unknown'} mode, {s['duration_s']:.1f} s)",
                 f"frames sent {s['frames_sent']}, received {s['frames_received']}"
                 + (f", dropped by server {s['frames_dropped']}" if s["frames_dropped"] else "")]
        if s["frame_turnaround_ms"]:
            t = s["frame_turnaround_ms"]
            lines.append(f"frame turnaround ms: p50 {t['p50']}, p90 {t['p90']}, max {t['max']}")
        if s["response_latency_ms"]:
            r = s["response_latency_ms"]
            lines.append(f"response latency ms ({s['responses']} replies): p50 {r['p50']}, p90 {r['p90']}, "
                         f"max {r['max']}")
        if s["llm_tokens"]:
            lines.append(f"LLM tokens: {s['llm_tokens']['input']} in, {s['llm_tokens']['output']} out")
        if s["errors"]:
            lines.append(f"errors from server: {s['errors']}")
        for line in lines:
            self._line(line)

    def _show_live(self, text: str) -> None:
        self.out.write("\r\033[K" + text)
        self.out.flush()
        self._live = True

    def _line(self, text: str, stream: tp.TextIO | None = None) -> None:
        if self._live:
            self.out.write("\r\033[K")
            self.out.flush()
            self._live = False
        print(text, file=stream or self.out, flush=True)
