"""What a listener gets from the assistant's audio as it arrived: turnaround, playout gaps, lost packets.

The input of every figure is the list of received pieces of the assistant's stream, each with its position
in that stream (samples at 24 kHz from the stream's start; for the WebSocket the k-th binary message is
frame k, for RTP the position comes from the packet's timestamp), its length and its arrival time. The same
functions serve both transports, so their figures mean the same thing.

The player (`playout_gaps`) is a fixed-delay jitter buffer: playout starts `delay_s` after the first piece
arrived and then runs at the stream's pace, so sample p plays at first_arrival + delay_s + (p - p0) / rate.
A piece that is not there when its first sample is due is not played (missing: lost, or late and
discarded, as a real-time player does); each maximal run of playout with nothing to play is one gap.
Loss concealment (Opus PLC, NetEq's expansion) would make short gaps hard to hear: the count and the
longest gap say how much of that applies.
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass

from ..audio import FRAME_SAMPLES, SAMPLE_RATE
from ..stats import percentiles


@dataclass(frozen=True)
class Piece:
    """One received piece of the assistant's audio."""

    position: int    # first sample's index in the assistant's stream (24 kHz)
    samples: int     # length, in 24 kHz samples
    arrival: float   # time.monotonic() when it arrived


def lost_packets(pieces: tp.Sequence[Piece]) -> tuple[int, int]:
    """(packets, samples) missing between the first and the last received piece, counting a hole in
    units of the stream's usual packet (the most common piece length)."""
    if not pieces:
        return 0, 0
    ordered = sorted(pieces, key=lambda p: p.position)
    lengths = [p.samples for p in ordered if p.samples > 0]
    packet = max(set(lengths), key=lengths.count) if lengths else 1
    missing, end = 0, ordered[0].position
    for piece in ordered:
        if piece.position > end:
            missing += piece.position - end
        end = max(end, piece.position + piece.samples)
    return round(missing / packet), missing


def playout_gaps(pieces: tp.Sequence[Piece], delay_s: float, rate: int = SAMPLE_RATE) -> list[float]:
    """Lengths (ms) of the gaps a fixed-delay player would leave, in playout order (module docstring)."""
    if not pieces:
        return []
    ordered = sorted(pieces, key=lambda p: p.position)
    start = min(p.arrival for p in pieces) + delay_s
    p0 = ordered[0].position
    gaps: list[float] = []
    gap = 0          # samples in the current run of nothing to play
    cursor = p0      # playout position reached
    for piece in ordered:
        due = start + (piece.position - p0) / rate
        on_time = piece.arrival <= due
        if piece.position > cursor:              # a hole before this piece: nothing was received there
            gap += piece.position - cursor
            cursor = piece.position
        end = piece.position + piece.samples
        if end <= cursor:                         # a duplicate or an overlap already played
            continue
        if on_time:
            if gap:
                gaps.append(gap * 1000.0 / rate)
                gap = 0
        else:
            gap += end - cursor
        cursor = end
    if gap:
        gaps.append(gap * 1000.0 / rate)
    return gaps


def turnaround_ms(pieces: tp.Sequence[Piece], sent_at: tp.Sequence[float],
                  frame_samples: int = FRAME_SAMPLES) -> list[float]:
    """Per received piece: its arrival minus the send time of the input frame at the same position (the
    duplex model answers input frame k with output frame k), for pieces whose input frame was sent."""
    out = []
    for piece in pieces:
        k = (piece.position + max(piece.samples, 1) - 1) // frame_samples
        if 0 <= k < len(sent_at):
            out.append((piece.arrival - sent_at[k]) * 1000.0)
    return out


def summary(pieces: tp.Sequence[Piece], sent_at: tp.Sequence[float], delay_s: float) -> dict[str, tp.Any]:
    """The figures of one run: turnaround percentiles, gaps, lost packets."""
    gaps = playout_gaps(pieces, delay_s)
    lost, lost_samples = lost_packets(pieces)
    turn = percentiles(turnaround_ms(pieces, sent_at), (50, 99))
    return {
        "pieces": len(pieces),
        "audio_ms": round(sum(p.samples for p in pieces) * 1000.0 / SAMPLE_RATE, 1),
        "turnaround_ms": turn,
        "gaps": len(gaps),
        "gap_ms": round(sum(gaps), 1),
        "longest_gap_ms": round(max(gaps, default=0.0), 1),
        "packets_lost": lost,
        "lost_ms": round(lost_samples * 1000.0 / SAMPLE_RATE, 1),
    }
