"""Several `duplex serve` workers behind HAProxy: the supervisor and HAProxy's configuration (docs/deploy.md)."""

from .haproxy import BalancerSettings, DnsWorkers, WorkerAddress, add_lb_config_parser, render
from .supervisor import Fleet, FleetError, parse_gpus, run_fleet, worker_argv

__all__ = [
    "BalancerSettings",       # HAProxy's bind address and timeouts
    "DnsWorkers",             # workers found through a DNS name (a Kubernetes headless Service)
    "Fleet",                  # the workers (and HAProxy) of one machine, started, restarted, stopped
    "FleetError",             # the fleet cannot start (the message says why)
    "WorkerAddress",          # one worker: host, port, slots
    "add_lb_config_parser",   # `duplex lb-config`
    "parse_gpus",             # --gpus 'all' or 0,1,2 -> device numbers
    "render",                 # HAProxy's configuration for a set of workers
    "run_fleet",              # `duplex serve --gpus/--workers`
    "worker_argv",            # one worker's command line from the fleet's options
]
