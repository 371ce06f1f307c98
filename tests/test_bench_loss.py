"""`scripts/bench_loss.py` and its parts: the playout figures, RTP headers read on the relay, SDP routing,
and a short run of the script itself over both transports (structure and counts, not the figures)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtcpSrPacket, RtcpSenderInfo, RtpPacket

from duplex.bench.playout import (Piece, lateness_ms, lost_packets, playout_gaps, summary, transport_delay_ms,
                                  transport_gaps, turnaround_ms)
from duplex.bench.rtp import AUDIO_LEVEL_URI, audio_level_id, parse_rtp
from duplex.bench.sdp import NoCandidate, first_candidate, route_through
from duplex.bench.wsframes import MessageCutter

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_loss.py"
N = 480   # one 20 ms piece at 24 kHz


def stream(arrivals: list[float | None], audible: list[bool] | None = None) -> list[Piece]:
    """Pieces k = 0.. of 20 ms each, arriving at arrivals[k] (None: lost)."""
    return [Piece(k * N, N, t, True if audible is None else audible[k]) for k, t in enumerate(arrivals) if t is not None]


def test_on_time_stream_has_no_gaps_and_no_lateness():
    pieces = stream([1.0 + 0.02 * k for k in range(50)])
    assert playout_gaps(pieces, delay_s=0.001) == []   # (a hair of buffer: the clock's float rounding)
    assert max(lateness_ms(pieces)) == pytest.approx(0.0, abs=1e-6)
    assert lost_packets(pieces) == (0, 0)


def test_a_lost_packet_a_late_one_and_inserted_silence_are_gaps():
    arrivals: list[float | None] = [1.0 + 0.02 * k for k in range(20)]
    arrivals[5] = None                 # lost
    arrivals[10] = 1.0 + 0.2 + 0.5     # due at 1.0 + 0.2 + 0.1 (the buffer): 0.4 s late, not played
    audible = [True] * 20
    audible[15] = audible[16] = False  # the server had nothing: silence in the stream
    pieces = stream(arrivals, audible)
    assert playout_gaps(pieces, delay_s=0.1) == [20.0, 20.0, 40.0]
    assert lost_packets(pieces) == (1, N)
    assert max(lateness_ms(pieces)) == pytest.approx(500.0)
    figures = summary(pieces, None, 0.1)
    assert (figures["gaps"], figures["gap_ms"], figures["longest_gap_ms"]) == (3, 80.0, 40.0)
    assert figures["silent_ms"] == 40.0 and figures["turnaround_ms"] is None


def test_a_stall_longer_than_the_buffer_is_one_gap_and_the_burst_after_it_plays():
    # TCP's way: packets 10..19 held 300 ms, then all at once; a 100 ms buffer covers 100 ms of it
    arrivals = [1.0 + 0.02 * k for k in range(40)]
    for k in range(10, 25):
        arrivals[k] = max(arrivals[k], 1.0 + 0.2 + 0.3)
    gaps = playout_gaps(stream(arrivals), delay_s=0.1)
    assert len(gaps) == 1 and gaps[0] == pytest.approx(200.0)


def test_the_stream_starts_at_its_first_audible_piece():
    pieces = stream([5.0, 1.0 + 0.04, 1.0 + 0.06], [False, True, True])   # a silent first piece, late
    assert playout_gaps(pieces, delay_s=0.001) == []


def test_turnaround_pairs_output_frame_k_with_input_frame_k():
    sent = [10.0, 10.08, 10.16]
    pieces = [Piece(k * 1920, 1920, sent[k] + 0.05 + 0.01 * k) for k in range(3)]
    assert turnaround_ms(pieces, sent) == pytest.approx([50.0, 60.0, 70.0])


def test_path_figures_count_only_what_the_path_did():
    # sent every 20 ms by the server, arriving 20 ms later; then the server is 1 s late (its own lateness,
    # not the path's), one packet lost, one held 300 ms by the path
    sent = [1.0 + 0.02 * k for k in range(30)]
    sent[20:] = [s + 1.0 for s in sent[20:]]
    arrivals: list[float | None] = [s + 0.02 for s in sent]
    arrivals[7] = None
    arrivals[12] = sent[12] + 0.32
    pieces = [Piece(k * N, N, t, True, sent[k]) for k, t in enumerate(arrivals) if t is not None]
    assert transport_gaps(pieces, allowance_s=0.02 + 0.1) == [20.0, 20.0]
    delays = transport_delay_ms(pieces)
    assert len(delays) == 29 and max(delays) == pytest.approx(320.0) and min(delays) == pytest.approx(20.0)
    assert transport_gaps(stream([1.0]), 0.1) == []   # no send times (none known): no path gaps


def _ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        return head + bytes([len(payload)]) + payload
    return head + bytes([126]) + len(payload).to_bytes(2, "big") + payload


def test_the_server_stream_is_cut_into_messages_at_their_last_byte():
    stream_bytes = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
                    + _ws_frame(0x1, b'{"type":"ready"}') + _ws_frame(0x2, b"\x01" + b"a" * 300)
                    + _ws_frame(0x2, b"\x01" + b"b" * 20, fin=False) + _ws_frame(0x9, b"ping")
                    + _ws_frame(0x0, b"c" * 10))
    cutter = MessageCutter()
    for i in range(0, len(stream_bytes), 7):   # in pieces that split headers and frames anywhere
        cutter.feed(stream_bytes[i:i + 7], float(i))
    last = float((len(stream_bytes) - 1) // 7 * 7)
    assert [(op, first) for op, first, _ in cutter.messages] == [(0x1, ord("{")), (0x2, 1), (0x2, 1)]
    assert cutter.messages[-1][2] == last   # the fragmented one ends with its last fragment


async def _offer_sdp() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_sdp_routing_leaves_one_candidate_per_media_section_at_the_relay():
    sdp = await _offer_sdp()
    host, port = first_candidate(sdp)
    routed = route_through(sdp, ("127.0.0.1", 4242))
    sections = routed.split("\r\nm=")[1:]
    assert len(sections) == 2   # the audio and the data channel's
    for section in sections:
        candidates = [line for line in section.splitlines() if line.startswith("a=candidate:")]
        assert candidates == ["a=candidate:relay 1 udp 2130706431 127.0.0.1 4242 typ host"]
    assert f" {host} {port} " not in routed
    assert first_candidate(routed) == ("127.0.0.1", 4242)
    with pytest.raises(NoCandidate):
        first_candidate("v=0\r\n")


async def test_rtp_header_and_audio_level_are_read_from_aiortcs_own_packets():
    sdp = await _offer_sdp()
    level_id = audio_level_id(sdp)
    assert level_id is not None
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=level_id,
                                                                                            uri=AUDIO_LEVEL_URI)]))
    packet = RtpPacket(payload_type=111, sequence_number=65535, timestamp=4_000_000_000, ssrc=1234, payload=b"\x01" * 40)
    packet.extensions.audio_level = (True, 37)
    header = parse_rtp(packet.serialize(extensions), level_id)
    assert header is not None
    assert (header.sequence, header.timestamp, header.ssrc, header.payload_type, header.level_dbov) == \
        (65535, 4_000_000_000, 1234, 111, 37)
    assert parse_rtp(packet.serialize(extensions), None).level_dbov is None   # id unknown: no level
    rtcp_packet = RtcpSrPacket(ssrc=1, sender_info=RtcpSenderInfo(ntp_timestamp=0, rtp_timestamp=0, packet_count=0,
                                                            octet_count=0))
    rtcp = bytes(rtcp_packet)
    assert parse_rtp(rtcp) is None                              # RTCP on the same port
    assert parse_rtp(b"\x00\x01" + b"\x00" * 30) is None        # STUN
    assert parse_rtp(b"\x16\xfe\xfd" + b"\x00" * 30) is None    # DTLS


def test_the_script_runs_both_transports_through_the_relays(tiny_server, tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_loss   # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(SCRIPT.parent))
    out = tmp_path / "loss.json"
    assert bench_loss.main(["--url", tiny_server.http_url, "--seconds", "3", "--losses", "0,5", "--warmup-s", "0",
                            "--settle-s", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"websocket", "webrtc"}
    for transport, by_loss in data["results"].items():
        assert list(by_loss) == ["0", "5"]
        for loss, figures in by_loss.items():
            assert figures["pieces"] > 0, (transport, loss)
            assert figures["lateness_ms"] is not None
            assert {"gaps", "gap_ms", "longest_gap_ms", "packets_lost", "silent_ms"} <= set(figures)
            assert figures["relay"]["packets"]["up"] > 0 and figures["relay"]["packets"]["down"] > 0
        assert by_loss["0"]["relay"]["lost"] == {"up": 0, "down": 0}
    ws, rtc = data["results"]["websocket"], data["results"]["webrtc"]
    assert ws["0"]["turnaround_ms"] is not None and ws["0"]["frames_received"] > 0
    assert ws["0"]["path_delay_ms"] is not None and rtc["0"]["path_delay_ms"] is not None   # send times seen
    assert rtc["0"]["rtp_down"] > 0 and rtc["0"]["events"] > 0   # audio and the data channel crossed the relay
    assert rtc["5"]["rtp_down_lost"] + rtc["5"]["rtp_up_lost"] > 0   # ~300 packets at 5 %
