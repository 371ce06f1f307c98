"""Reading the clear parts of SRTP packets on the relay: sequence number, timestamp, audio level.

SRTP encrypts only the payload; the RTP header and its one-byte header extensions (RFC 8285) stay in the
clear, so the relay can see each audio packet's place in the stream and, from the `ssrc-audio-level`
extension (RFC 6464) that aiortc and browsers send, how loud it is, without the keys. One UDP port carries
STUN, DTLS, RTP and RTCP together (RFC 7983): RTP and RTCP start with a byte in 128..191, and RTCP's
packet types (200..207) fill the second byte where RTP has its marker bit and payload type.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


@dataclass(frozen=True)
class RtpHeader:
    sequence: int          # 16 bits, wraps
    timestamp: int         # 32 bits, in the codec's clock (Opus: 48 kHz)
    ssrc: int
    payload_type: int
    level_dbov: int | None  # the audio level as -dBov (0 loudest .. 127 silence), when the extension is there


def audio_level_id(sdp: str) -> int | None:
    """The extension id the description gives `ssrc-audio-level` (`a=extmap:<id> <uri>`), if any."""
    match = re.search(r"^a=extmap:(\d+)(?:/\w+)? " + re.escape(AUDIO_LEVEL_URI) + r"\s*$", sdp, re.M)
    return int(match.group(1)) if match else None


def parse_rtp(datagram: bytes, level_id: int | None = None) -> RtpHeader | None:
    """The header of an RTP packet; None for anything else on the port (STUN, DTLS, RTCP, too short)."""
    if len(datagram) < 12 or not 128 <= datagram[0] <= 191 or 192 <= datagram[1] <= 223:
        return None
    first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", datagram)
    level = None
    offset = 12 + 4 * (first & 0x0F)   # past the CSRCs
    if first & 0x10 and level_id is not None and len(datagram) >= offset + 4:
        profile, words = struct.unpack_from("!HH", datagram, offset)
        ext, end = offset + 4, min(offset + 4 + 4 * words, len(datagram))
        while profile == 0xBEDE and ext < end:   # one-byte headers: id (4 bits), length - 1 (4 bits), data
            ident, length = datagram[ext] >> 4, (datagram[ext] & 0x0F) + 1
            if ident == 0:         # padding
                ext += 1
                continue
            if ident == 15:        # the rest is not to be read
                break
            if ident == level_id and ext + 1 < end:
                level = datagram[ext + 1] & 0x7F   # the top bit is the voice-activity flag
            ext += 1 + length
    return RtpHeader(sequence, timestamp, ssrc, second & 0x7F, level)
