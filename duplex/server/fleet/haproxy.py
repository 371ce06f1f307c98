"""`duplex lb-config`: the HAProxy configuration that puts a set of `duplex serve` workers behind one address.

HAProxy is the admission control: a conversation socket (`/ws`, `/api/chat`, `/v1/realtime`) holds one
connection to one worker for its whole life, so each worker is a server with `maxconn` = its slots,
balanced by least connections. A new conversation lands on a worker with a free slot; when every worker
is full it waits in HAProxy's queue at most `queue_timeout_s`, then gets a 503 whose body is the
protocol's `capacity` error (never a hang). Everything else (the page, `/health`, `/metrics` through the
balancer) goes to a second backend without a connection limit, so a page load never takes a slot.
Health checks read `/health` (a draining worker answers 503 and gets no new conversation; its running
ones go on). Upgraded sockets live under `timeout tunnel` (long: a conversation is long, and silent
stretches are still 12.5 audio messages a second).

Workers are given either as a list (`host:port:slots`, one `server` line each; many hosts are just more
lines) or, on Kubernetes, as a DNS name (`server-template` over a headless Service: HAProxy follows the
pods as they come and go). See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..options import LB_QUEUE_TIMEOUT_S

CONVERSATION_PATHS = ("/ws", "/api/chat", "/v1/realtime")


@dataclass(frozen=True)
class WorkerAddress:
    host: str
    port: int
    slots: int    # conversations it serves at once: the server's maxconn

    @classmethod
    def parse(cls, text: str) -> "WorkerAddress":
        """`host:port:slots` (IPv6 hosts in brackets: `[::1]:9001:8`)."""
        head, sep, slots = text.rpartition(":")
        host, sep2, port = head.rpartition(":")
        if not sep or not sep2 or not host:
            raise ValueError(f"worker {text!r}: expected host:port:slots, e.g. 127.0.0.1:9001:8")
        try:
            worker = cls(host, int(port), int(slots))
        except ValueError:
            raise ValueError(f"worker {text!r}: port and slots must be integers (host:port:slots)") from None
        if not 0 < worker.port < 65536 or worker.slots < 1:
            raise ValueError(f"worker {text!r}: port in 1-65535 and at least one slot")
        return worker

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DnsWorkers:
    """Workers found by DNS: every address of `name` (a headless Service), `count` server slots at most."""
    name: str
    port: int
    slots: int
    count: int
    resolver: str | None = None   # ip:port of a DNS server; None: the nameservers of /etc/resolv.conf (a pod's)


@dataclass(frozen=True)
class BalancerSettings:
    bind: str = "127.0.0.1:8998"          # where clients connect
    queue_timeout_s: float = LB_QUEUE_TIMEOUT_S   # a conversation waits this long for a free slot, then 503
    check_interval_ms: int = 1000         # /health checks per worker
    tunnel_timeout_s: int = 3600          # an upgraded socket with no traffic either way this long is closed
    connect_timeout_s: float = 5.0
    stats_bind: str | None = None         # HAProxy's own stats page and Prometheus exporter (host:port)


CAPACITY_BODY = json.dumps({"type": "error", "session_id": "", "code": "capacity",
                            "message": "every worker is full; try again later"})


def _s(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def render(workers: list[WorkerAddress] | DnsWorkers, settings: BalancerSettings = BalancerSettings()) -> str:
    """The whole haproxy.cfg as text."""
    if isinstance(workers, list) and not workers:
        raise ValueError("no workers: give at least one host:port:slots")
    total_slots = (sum(w.slots for w in workers) if isinstance(workers, list) else workers.slots * workers.count)
    paths = " ".join(CONVERSATION_PATHS)
    lines = [
        "# Written by `duplex lb-config` (docs/deploy.md). One line per worker below; regenerate rather than edit.",
        "global",
        f"    maxconn {max(1024, 2 * total_slots + 256)}",
        "",
        "defaults",
        "    mode http",
        "    option dontlognull",
        f"    timeout connect {_s(settings.connect_timeout_s)}",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    timeout client-fin 5s",
        # once upgraded, a WebSocket is a tunnel: this is its idle limit (the worker also pings every 30 s)
        f"    timeout tunnel {settings.tunnel_timeout_s}s",
        f"    timeout queue {_s(settings.queue_timeout_s)}",
        # a connect refused (a worker that just died, before its check fails) is retried on another worker
        "    retries 2",
        "    option redispatch 1",
        "",
        "frontend duplex",
        f"    bind {settings.bind}",
        f"    acl conversation path {paths}",
        "    use_backend conversations if conversation",
        "    default_backend pages",
        "",
        "backend conversations",
        "    # one conversation = one connection for its whole life: maxconn = the worker's slots,",
        "    # least connections first; past every maxconn: the queue, then this 503",
        "    balance leastconn",
        "    http-reuse never",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        f"    http-error status 503 content-type application/json string '{CAPACITY_BODY}'",
        f"    default-server check inter {settings.check_interval_ms}ms fastinter {settings.check_interval_ms // 2}ms "
        "fall 2 rise 1",
    ]
    if isinstance(workers, list):
        lines += [f"    server w{i} {w} maxconn {w.slots}" for i, w in enumerate(workers)]
    else:
        lines.append(f"    server-template w 1-{workers.count} {workers.name}:{workers.port} maxconn {workers.slots} "
                     "resolvers cluster init-addr none")
    lines += [
        "",
        "backend pages",
        "    # the browser page, /health and /metrics through the balancer: no slot taken",
        "    balance roundrobin",
    ]
    if isinstance(workers, list):
        lines += [f"    server w{i} {w} track conversations/w{i}" for i, w in enumerate(workers)]
    else:
        lines.append(f"    server-template w 1-{workers.count} {workers.name}:{workers.port} "
                     "resolvers cluster init-addr none check inter 2s")
    if isinstance(workers, DnsWorkers):
        source = f"nameserver dns {workers.resolver}" if workers.resolver else "parse-resolv-conf"
        lines += ["", "resolvers cluster", f"    {source}", "    hold valid 5s",
                  "    accepted_payload_size 8192"]
    if settings.stats_bind:
        lines += ["", "frontend stats", f"    bind {settings.stats_bind}",
                  "    http-request use-service prometheus-exporter if { path /metrics }",
                  "    stats enable", "    stats uri /stats", "    stats refresh 5s"]
    return "\n".join(lines) + "\n"


def add_lb_config_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lb-config", help="write the HAProxy configuration for a set of duplex workers",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="HAProxy in front of `duplex serve` workers: maxconn = slots per worker, "
                                   "least connections, /health checks, a capacity 503 when all are full, "
                                   "long WebSocket timeouts (docs/deploy.md).")
    p.add_argument("--worker", action="append", default=[], metavar="HOST:PORT:SLOTS",
                   help="a worker and the conversations it serves at once (repeat for each; any host)")
    p.add_argument("--dns", metavar="NAME:PORT",
                   help="instead of --worker: every address of a DNS name (a Kubernetes headless Service), "
                        "e.g. duplex-workers.duplex.svc.cluster.local:8998")
    p.add_argument("--dns-slots", type=int, default=8, help="--dns: slots of each worker")
    p.add_argument("--dns-max-workers", type=int, default=32, help="--dns: most workers HAProxy keeps a line for")
    p.add_argument("--resolver", metavar="IP:PORT",
                   help="--dns: the DNS server; default: the nameservers of /etc/resolv.conf (a pod's: the cluster DNS)")
    p.add_argument("--bind", default=BalancerSettings.bind, help="address:port HAProxy listens on for clients")
    p.add_argument("--queue-timeout-s", type=float, default=BalancerSettings.queue_timeout_s,
                   help="how long a new conversation waits for a free slot when every worker is full, "
                        "before it gets a 503 capacity")
    p.add_argument("--check-interval-ms", type=int, default=BalancerSettings.check_interval_ms,
                   help="time between /health checks of each worker (2 failures mark it down)")
    p.add_argument("--tunnel-timeout-s", type=int, default=BalancerSettings.tunnel_timeout_s,
                   help="an open conversation socket with no traffic this long is closed")
    p.add_argument("--stats", metavar="HOST:PORT", help="also serve HAProxy's stats page (/stats) and its "
                                                        "Prometheus exporter (/metrics) here")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=run_lb_config)


def settings_from_args(args: argparse.Namespace) -> BalancerSettings:
    return BalancerSettings(bind=args.bind, queue_timeout_s=args.queue_timeout_s,
                            check_interval_ms=args.check_interval_ms, tunnel_timeout_s=args.tunnel_timeout_s,
                            stats_bind=args.stats)


def run_lb_config(args: argparse.Namespace) -> int:
    try:
        workers: list[WorkerAddress] | DnsWorkers
        if args.dns:
            if args.worker:
                raise ValueError("give either --worker lines or --dns, not both")
            name, _, port = args.dns.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(f"--dns {args.dns!r}: expected NAME:PORT")
            workers = DnsWorkers(name, int(port), args.dns_slots, args.dns_max_workers, args.resolver)
        else:
            workers = [WorkerAddress.parse(w) for w in args.worker]
        text = render(workers, settings_from_args(args))
    except ValueError as exc:
        print(f"duplex lb-config: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
