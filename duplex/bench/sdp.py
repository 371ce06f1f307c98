"""Routing a WebRTC call through `lossy_udp.UdpRelay` by rewriting the ICE candidates of its SDP.

The offer's and the answer's candidates (aiortc gathers them all before the description is sent, so
there are no trickled ones) are replaced, in every media section, by one host candidate: the relay's
socket that faces the reader of that description. The first IPv4 UDP candidate of each description is
the real address the relay forwards to. Only component 1 exists (aiortc always muxes RTCP and bundles).
"""

from __future__ import annotations

Address = tuple[str, int]


class NoCandidate(ValueError):
    """The description has no IPv4 UDP candidate to route."""


def first_candidate(sdp: str) -> Address:
    """(host, port) of the first IPv4 UDP candidate: `a=candidate:<foundation> <component> udp <priority>
    <host> <port> typ <type> ...`."""
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line[len("a=candidate:"):].split()
            if len(fields) >= 6 and fields[2].lower() == "udp" and fields[4].count(".") == 3:
                return fields[4], int(fields[5])
    raise NoCandidate("no IPv4 UDP ICE candidate in the session description")


def route_through(sdp: str, relay: Address) -> str:
    """The same description with each media section's candidates replaced by one host candidate at `relay`."""
    out: list[str] = []
    placed = False   # the relay's candidate is already in this media section
    for line in sdp.splitlines():
        if line.startswith("m="):
            placed = False
        if line.startswith("a=candidate:"):
            if not placed:
                out.append(f"a=candidate:relay 1 udp 2130706431 {relay[0]} {relay[1]} typ host")
                placed = True
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"
