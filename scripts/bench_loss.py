#!/usr/bin/env python
"""The same conversation over the WebSocket and over WebRTC, through a lossy link (docs/webrtc.md,
"Measured under loss").

Starts `duplex serve` with the tiny preset (or targets --url), then for each transport and each loss rate
plays the user's audio (a WAV, or espeak-ng sentences with pauses) at real-time pace to the duplex model
through a relay on loopback that loses and delays packets: a TCP relay that stalls the stream for a
retransmission timeout per lost segment (WebSocket), a UDP relay that drops datagrams (WebRTC). Prints per
transport: audio turnaround p50/p99, gaps in the assistant's playout (a fixed-delay jitter buffer), packets
lost, each beside the loss-free run; writes the figures as JSON.

    OMP_NUM_THREADS=1 python scripts/bench_loss.py --seconds 30 --json bench-loss.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duplex.bench.link import LinkModel  # noqa: E402  (after the path is set, for a plain checkout)
from duplex.bench.loss_bench import conversation, run_all, table  # noqa: E402
from duplex.bench.loss_runs import LossTransport, WebSocketRun  # noqa: E402
from duplex.server.process import ServerProcess  # noqa: E402

TRANSPORTS = ("websocket", "webrtc")


def make_transports(names: list[str], token: str | None, seed: int) -> list[LossTransport]:
    made: list[LossTransport] = []
    for name in names:
        if name == "websocket":
            made.append(WebSocketRun(token=token, seed=seed))
        elif name == "webrtc":
            from duplex.bench.loss_webrtc import WebRtcRun   # aiortc is only needed for this one
            made.append(WebRtcRun(token=token, seed=seed))
        else:
            raise SystemExit(f"unknown transport {name!r}: choose from {', '.join(TRANSPORTS)}")
    return made


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (http://host:port) instead of starting one")
    p.add_argument("--preset", default="tiny", help="the preset of the server this script starts (default tiny)")
    p.add_argument("--token", help="the server's access token, if it has one")
    p.add_argument("--wav", help="the user's side of the conversation (any rate, mixed to mono); default: "
                                 "espeak-ng sentences with 1.5 s pauses")
    p.add_argument("--seconds", type=float, default=30.0, help="conversation length (the WAV cut or the "
                                                                "sentences repeated to it; 0: the whole WAV)")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated: websocket, webrtc")
    p.add_argument("--losses", default="0,2,5", help="loss rates in %% per packet, comma-separated; the first "
                                                     "is the baseline of the ratios (default 0,2,5)")
    p.add_argument("--rtt-ms", type=float, default=40.0, help="round trip of the link (half each way)")
    p.add_argument("--rto-ms", type=float, default=240.0, help="TCP retransmission timeout of a lost segment "
                                                               "(Linux: SRTT + 200 ms at least)")
    p.add_argument("--mss", type=int, default=1400, help="bytes per TCP segment")
    p.add_argument("--jitter-buffer-ms", type=float, default=100.0, help="the modelled player's fixed playout "
                                                                          "delay after the first audio")
    p.add_argument("--loss-directions", default="up,down", help="which directions lose packets: up (client to "
                                                                 "server), down, or both (default); both are delayed")
    p.add_argument("--warmup-s", type=float, default=3.0, help="an unmeasured conversation of this length first "
                                                                "(the server's warm-up); 0: none")
    p.add_argument("--settle-s", type=float, default=4.0, help="after the conversation, how long the last answers "
                                                              "may take (a stalled TCP stream delivers them late)")
    p.add_argument("--seed", type=int, default=1, help="seeds the link's losses and the model's sampling")
    p.add_argument("--json", type=Path, default=Path("bench-loss.json"), help="where to write the figures")
    args = p.parse_args(argv)

    losses = [float(x) for x in args.losses.split(",") if x.strip()]
    names = [x.strip() for x in args.transports.split(",") if x.strip()]
    transports = make_transports(names, args.token, args.seed)
    pcm = conversation(args.wav, args.seconds)
    directions = tuple(d.strip() for d in args.loss_directions.split(",") if d.strip())
    if not directions or set(directions) - {"up", "down"}:
        raise SystemExit(f"--loss-directions takes up, down or up,down; got {args.loss_directions!r}")
    link = LinkModel(0.0, args.rtt_ms, args.rto_ms, args.mss, args.seed, directions)
    header = {"machine": platform.node(), "cpus": os.cpu_count(), "load_before": load(), "rtt_ms": args.rtt_ms,
              "rto_ms": args.rto_ms, "mss": args.mss, "jitter_buffer_ms": args.jitter_buffer_ms,
              "loss_directions": list(directions),
              "conversation_s": round(pcm.size / 24000, 2), "seed": args.seed, "preset": None if args.url else args.preset}
    print(f"bench_loss on {header['machine']} ({header['cpus']} CPUs, load {header['load_before']}): "
          f"{header['conversation_s']} s of conversation, RTT {args.rtt_ms:g} ms, losses {args.losses} %", flush=True)
    server = None if args.url else ServerProcess("--preset", args.preset, "--slots", "2", "--threads", "1",
                                                 "--no-cascade")
    try:
        url = args.url or server.http_url   # type: ignore[union-attr]
        results = asyncio.run(run_all(url, transports, losses, pcm, link, args.jitter_buffer_ms, args.warmup_s, args.settle_s,
                                      log=lambda line: print(line, flush=True)))
    finally:
        if server is not None:
            server.stop()
    header["load_after"] = load()
    print(table(results))
    print(f"load after: {header['load_after']}")
    args.json.write_text(json.dumps({**header, "results": results}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
