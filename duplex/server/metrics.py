"""Server-wide counters: Prometheus exposition for /metrics and the totals /health reports.

One registry per app (not the global one), so several servers in one process (tests) stay apart.
"""

from __future__ import annotations

import threading
import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..protocol import CASCADE_STAGES

# `*_created` series add noise for no use here.
prometheus_client.disable_created_metrics()

MS_BUCKETS = (1, 2, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000, 2000, 5000)
STAGE_BUCKETS = (5, 10, 25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.monotonic()
        self.frames_in_total = 0
        self.frames_out_total = 0
        r = self.registry
        self.sessions = Gauge("duplex_sessions_active", "Conversations running now", ["mode"], registry=r)
        self.sessions_total = Counter("duplex_sessions", "Conversations started", ["mode"], registry=r)
        self.connections = Gauge("duplex_connections_open", "Sockets and WebRTC calls open", ["endpoint"], registry=r)
        self.refused = Counter("duplex_connections_refused", "Conversation sockets and WebRTC calls refused at open",
                               ["endpoint", "reason"], registry=r)
        self.start_timeouts = Counter("duplex_start_timeouts", "Sockets closed for starting no conversation in time",
                                      ["endpoint"], registry=r)
        self.frames_in = Counter("duplex_frames_in", "80 ms user audio frames consumed", registry=r)
        self.frames_out = Counter("duplex_frames_out", "80 ms assistant audio frames produced", registry=r)
        # not `self.frames_dropped`: that name is the SessionObserver method below, which this would shadow
        self.dropped = Counter("duplex_frames_dropped", "Frames dropped by full queues", registry=r)
        # a WebRTC call's uplink: time its RTP timestamps say is missing (lost packets), fed as silence
        self.rtc_concealed = Counter("duplex_webrtc_input_concealed_ms", "WebRTC input audio missing from the RTP "
                                     "stream (lost packets) and filled with silence (ms)", registry=r)
        self.errors = Counter("duplex_errors", "Error messages sent to clients", ["code"], registry=r)
        self.step_ms = Histogram("duplex_step_ms", "Batched model step time (ms)", ["engine"],
                                 buckets=MS_BUCKETS, registry=r)
        self.tick_frames = Histogram("duplex_tick_frames", "Frames served per batched step", ["engine"],
                                     buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64), registry=r)
        self.turnaround_ms = Histogram("duplex_frame_turnaround_ms", "User frame in -> assistant frame out (ms)",
                                       buckets=MS_BUCKETS, registry=r)
        self.response_latency_ms = Histogram("duplex_response_latency_ms", "End of user speech -> assistant audio (ms)",
                                             ["mode"], buckets=MS_BUCKETS, registry=r)
        # The cascade's stages of each assistant turn that spoke, from the end of the user's turn decided
        # (engines.base.CASCADE_STAGES; the same figures as the turn's `metrics` message).
        self.stage_ms = Histogram("duplex_cascade_stage_ms", "Cascade turn: end of the user's turn decided -> "
                                  "each stage (stt_final, llm_first_token, tts_first_words, tts_first_frame, "
                                  "tts_first_audio) (ms)", ["stage"], buckets=STAGE_BUCKETS, registry=r)
        # CPU time of the thread that scrapes: /metrics and /health are served on the event loop thread,
        # so this is the loop's own CPU (sockets, codecs, sessions, scheduling), read at no cost per frame.
        self.loop_cpu = Gauge("duplex_event_loop_cpu_seconds", "CPU time of the event loop thread (s)", registry=r)
        self.loop_cpu.set_function(time.thread_time)
        self.process_cpu = Gauge("duplex_process_cpu_seconds", "CPU time of the whole server process (s)",
                                 registry=r)
        self.process_cpu.set_function(time.process_time)
        # Persona models: the cache of prefilled persona prompts (set from the engine's health at each scrape).
        self.prefix_cache = Gauge("duplex_persona_prefix_cache", "Persona prefix cache: bytes held, entries, "
                                  "hits and misses so far", ["what"], registry=r)

    # --- SessionObserver ---------------------------------------------------------------------
    def session_started(self, mode: str) -> None:
        self.sessions.labels(mode).inc()
        self.sessions_total.labels(mode).inc()

    def session_ended(self, mode: str) -> None:
        self.sessions.labels(mode).dec()

    def frame_in(self) -> None:
        self.frames_in_total += 1
        self.frames_in.inc()

    def frame_out(self, turnaround_ms: float | None) -> None:
        self.frames_out_total += 1
        self.frames_out.inc()
        if turnaround_ms is not None:
            self.turnaround_ms.observe(turnaround_ms)

    def frames_dropped(self, n: int) -> None:
        self.dropped.inc(n)

    def response_latency(self, mode: str, ms: float) -> None:
        self.response_latency_ms.labels(mode).observe(ms)

    def turn_stages(self, stages: dict[str, float]) -> None:
        for name in CASCADE_STAGES:
            ms = stages.get(f"{name}_ms")
            if ms is not None:
                self.stage_ms.labels(name).observe(ms)

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    # --- engines -----------------------------------------------------------------------------
    def tick_observer(self, engine: str):
        def observe(step_ms: float, frames: int) -> None:
            self.step_ms.labels(engine).observe(step_ms)
            self.tick_frames.labels(engine).observe(frames)
        return observe

    def persona_cache(self, stats: dict) -> None:
        for what in ("bytes", "entries", "hits", "misses"):
            self.prefix_cache.labels(what).set(stats[what])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def cpu_s(self) -> dict:
        """CPU seconds for /health; call on the event loop thread (its `loop_cpu_s` is the caller's thread)."""
        return {"loop_cpu_s": round(time.thread_time(), 4), "process_cpu_s": round(time.process_time(), 4),
                "model_threads_cpu_s": model_threads_cpu_s()}

    def uptime_s(self) -> float:
        return time.monotonic() - self.started


def model_threads_cpu_s() -> dict[str, float]:
    """CPU seconds of each engine's model thread (the schedulers' `<engine>-model_*` workers), by name."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if "-model" not in thread.name or thread.ident is None:
            continue
        try:
            out[thread.name] = round(time.clock_gettime(time.pthread_getcpuclockid(thread.ident)), 4)
        except (OSError, AttributeError):  # not POSIX, or the thread just ended
            continue
    return out
