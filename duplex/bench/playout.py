"""What a listener gets from the assistant's audio as it arrived: playout gaps, lateness, turnaround, losses.

The input of every figure is the list of received pieces of the assistant's stream, each with its position
in that stream (samples at 24 kHz; for the WebSocket the k-th binary message is frame k, for RTP the
position comes from the packet's timestamp), its length, its arrival time, and whether it is audible
(silence inside the stream is what a server sends when it had nothing ready). The same functions serve
both transports, so their figures mean the same thing. The stream is taken from its first audible piece.

The player (`playout_gaps`) is a fixed-delay jitter buffer: playout starts `delay_s` after the first
audible piece arrived and then runs at the stream's pace, so sample p plays at t0 + delay_s + (p - p0) /
rate. A piece that is not there when its first sample is due is not played (late: discarded, as a
real-time player does), and a lost or silent piece has nothing to play; each maximal run of playout with
nothing to play is one gap. Loss concealment (Opus PLC, NetEq's expansion) would make short gaps hard to
hear: the count and the longest gap say how much of that applies.

Lateness (`lateness_ms`): each audible piece's arrival minus its place on the stream's clock
(t0 + (p - p0) / rate), less the smallest such value of the run: how much later than the earliest piece
it came, relative to the stream's pace, i.e. the playout delay a gap-free player would have needed for it.

The path's own share (`transport_delay_ms`, `transport_gaps`) needs each piece's send time, which the relay
sees: the delay the path added to each piece, and the gaps it alone would cause a player that plays each
piece a fixed allowance after the server sent it. On a machine too busy for the model to keep real time the
end-to-end figures above are mostly the server's lateness; these are not.
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
    audible: bool = True   # above the silence level
    sent: float | None = None   # when the server sent it (seen on the relay), if known


def from_first_audible(pieces: tp.Sequence[Piece]) -> list[Piece]:
    """The pieces in stream order, from the first audible one on (what came before is the stream's start)."""
    ordered = sorted(pieces, key=lambda p: p.position)
    first = next((i for i, p in enumerate(ordered) if p.audible and p.samples > 0), len(ordered))
    return ordered[first:]


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
    ordered = from_first_audible(pieces)
    if not ordered:
        return []
    start, p0 = ordered[0].arrival + delay_s, ordered[0].position
    gaps: list[float] = []
    gap = 0          # samples in the current run of nothing to play
    cursor = p0      # playout position reached
    for piece in ordered:
        if piece.position > cursor:              # a hole before this piece: nothing was received there
            gap += piece.position - cursor
            cursor = piece.position
        end = piece.position + piece.samples
        if end <= cursor:                         # a duplicate or an overlap already played
            continue
        if piece.audible and piece.arrival <= start + (piece.position - p0) / rate:
            if gap:
                gaps.append(gap * 1000.0 / rate)
                gap = 0
        else:                                     # late, or silence: nothing to play for its length
            gap += end - cursor
        cursor = end
    if gap:
        gaps.append(gap * 1000.0 / rate)
    return gaps


def lateness_ms(pieces: tp.Sequence[Piece], rate: int = SAMPLE_RATE) -> list[float]:
    """Per audible piece: its lateness against the stream's pace (module docstring), in ms."""
    ordered = [p for p in from_first_audible(pieces) if p.audible]
    if not ordered:
        return []
    p0 = ordered[0].position
    offsets = [p.arrival - (p.position - p0) / rate for p in ordered]
    least = min(offsets)
    return [(o - least) * 1000.0 for o in offsets]


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


def transport_delay_ms(pieces: tp.Sequence[Piece]) -> list[float]:
    """Per piece whose send time is known: what the path added, arrival minus the server's send."""
    return [(p.arrival - p.sent) * 1000.0 for p in pieces if p.sent is not None]


def transport_gaps(pieces: tp.Sequence[Piece], allowance_s: float) -> list[float]:
    """Gaps (ms) the path alone makes, for a player that plays each piece `allowance_s` after the server
    sent it (the one-way delay plus its buffer): a piece lost, or later than that. The server's own
    lateness and silence are not counted (they are the same whatever carries the audio)."""
    ordered = from_first_audible(pieces)
    gaps: list[float] = []
    gap, cursor = 0, ordered[0].position if ordered else 0
    for piece in ordered:
        missing = max(0, piece.position - cursor)
        late = piece.sent is not None and piece.arrival - piece.sent > allowance_s
        if missing or late:
            gap += missing + (piece.samples if late else 0)
        if not late and gap:
            gaps.append(gap * 1000.0 / SAMPLE_RATE)
            gap = 0
        cursor = max(cursor, piece.position + piece.samples)
    if gap:
        gaps.append(gap * 1000.0 / SAMPLE_RATE)
    return gaps


def summary(pieces: tp.Sequence[Piece], sent_at: tp.Sequence[float] | None, delay_s: float,
            one_way_s: float = 0.0) -> dict[str, tp.Any]:
    """The figures of one run; `sent_at` (input frame k's send time) where output frame k answers input
    frame k and the positions say which is which (the WebSocket), else no turnaround."""
    gaps = playout_gaps(pieces, delay_s)
    path_gaps = transport_gaps(pieces, one_way_s + delay_s)
    lost, lost_samples = lost_packets(from_first_audible(pieces))
    return {
        "pieces": len(pieces),
        "path_delay_ms": percentiles(transport_delay_ms(pieces), (50, 99)),
        "path_gaps": len(path_gaps),
        "path_gap_ms": round(sum(path_gaps), 1),
        "audio_ms": round(sum(p.samples for p in pieces) * 1000.0 / SAMPLE_RATE, 1),
        "turnaround_ms": percentiles(turnaround_ms(pieces, sent_at), (50, 99)) if sent_at is not None else None,
        "lateness_ms": percentiles(lateness_ms(pieces), (50, 99)),
        "gaps": len(gaps),
        "gap_ms": round(sum(gaps), 1),
        "longest_gap_ms": round(max(gaps, default=0.0), 1),
        "silent_ms": round(sum(p.samples for p in from_first_audible(pieces) if not p.audible) * 1000.0 / SAMPLE_RATE, 1),
        "packets_lost": lost,
        "lost_ms": round(lost_samples * 1000.0 / SAMPLE_RATE, 1),
    }
