"""The deployment files (deploy/kubernetes/, `duplex lb-config`) are valid and agree with each other.

No cluster here: each manifest is checked against the Kubernetes OpenAPI schemas (the `kubernetes-validate`
package bundles them, strict: unknown fields fail), the HAProxy configurations by `haproxy -c` (Debian's
HAProxy, the series the manifest's image runs), and the numbers that must match across files are compared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from duplex import cli
from duplex.server.app import create_app
from duplex.server.fleet import BalancerSettings, DnsWorkers, WorkerAddress, render
from duplex.server.process import REPO

MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind: str, name: str) -> dict:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def haproxy_check(config: str, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("haproxy")
    if binary is None:
        if os.environ.get("DUPLEX_REQUIRE_HAPROXY"):
            pytest.fail("haproxy is required here (DUPLEX_REQUIRE_HAPROXY): apt-get install haproxy")
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run installs it)")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    return subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path):
    version = kubernetes_validate.latest_version()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, version, strict=True)   # raises ValidationError with the path


def test_a_broken_manifest_is_caught():
    worker = find("Deployment", "duplex-worker")
    worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, kubernetes_validate.latest_version(), strict=True)


def test_workers_balancer_and_probes_agree():
    worker = find("Deployment", "duplex-worker")["spec"]["template"]["spec"]
    container = worker["containers"][0]
    args = container["args"]
    slots = int(flag(args, "--slots"))
    cascade = 0 if "--no-cascade" in args else int(flag(args, "--cascade-slots"))
    assert "--no-duplex" not in args and int(flag(args, "--max-connections")) == slots + cascade
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["terminationGracePeriodSeconds"] > float(flag(args, "--drain-s"))   # the drain fits
    routes = {r.resource.canonical for r in create_app({}).router.routes() if r.resource is not None}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" and "/ready" in routes
    assert container["startupProbe"]["httpGet"]["path"] == "/health" and "/health" in routes
    assert "/metrics" in routes
    headless = find("Service", "duplex-workers")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    port = headless["ports"][0]["port"]
    # the ConfigMap is exactly `duplex lb-config --dns duplex-workers.duplex.svc.cluster.local:8998 --dns-slots 32 ...`
    expected = render(DnsWorkers("duplex-workers.duplex.svc.cluster.local", port, slots, 64, cascade_slots=cascade),
                      BalancerSettings(bind=":8998", stats_bind=":8404"))
    assert find("ConfigMap", "haproxy")["data"]["haproxy.cfg"] == expected, \
        "deploy/kubernetes/haproxy.yaml is out of date: regenerate it with the command in its header"
    assert f"maxconn {slots} " in expected


def test_kubernetes_haproxy_config_is_accepted_by_haproxy(tmp_path: Path):
    result = haproxy_check(find("ConfigMap", "haproxy")["data"]["haproxy.cfg"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lb_config_for_workers_on_several_hosts_is_accepted_by_haproxy(tmp_path: Path, capsys):
    assert cli.main(["lb-config", "--worker", "10.0.0.1:8998:32", "--worker", "10.0.0.2:8998:32",
                     "--worker", "[::1]:9001:4", "--stats", "127.0.0.1:8404"]) == 0
    config = capsys.readouterr().out
    assert "server w1 10.0.0.2:8998 maxconn 32" in config and "balance leastconn" in config
    check = haproxy_check(config, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_lb_config_says_what_is_wrong(capsys):
    assert cli.main(["lb-config", "--worker", "10.0.0.1:8998"]) == 2
    assert "expected host:port:slots" in capsys.readouterr().err
    assert cli.main(["lb-config"]) == 2
    assert "no workers" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["10.0.0.1:8998", "host:port:8", "10.0.0.1:8998:0", ":8998:4"])
def test_a_bad_worker_is_refused_with_the_expected_form(text: str):
    with pytest.raises(ValueError, match="host:port:slots|at least one slot"):
        WorkerAddress.parse(text)


def test_the_workers_take_their_token_from_a_secret_never_from_the_manifest():
    """Issue 24 item 10: every conversation needs the token; it comes from a Secret the operator creates
    (docs/deploy.md says how), by environment, never on the command line or in the repository."""
    container = find("Deployment", "duplex-worker")["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--token") for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    ref = env["DUPLEX_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional", False)   # no Secret, no pod: never served without a token
    assert not any(d["kind"] == "Secret" for d in documents())   # its value is the operator's, not in the repo
    guide = (REPO / "docs" / "deploy.md").read_text()
    assert f"kubectl -n duplex create secret generic {ref['name']} --from-file={ref['key']}=" in guide


def test_the_front_service_is_cluster_internal_unless_the_operator_chooses_a_load_balancer():
    services = [d for d in documents() if d["kind"] == "Service"]
    assert services and all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    guide = (REPO / "docs" / "deploy.md").read_text()
    assert '"type":"LoadBalancer"' in guide   # the documented choice (a patch of the `duplex` Service)


def test_lb_config_has_a_backend_per_engine_with_each_workers_slots_of_it(tmp_path: Path, capsys):
    """Issue 24 item 14: a worker's duplex and cascade slots are separate backends' maxconn (never their sum), the
    query picks the backend, and a worker is health-checked once (its other lines track that check)."""
    assert cli.main(["lb-config", "--worker", "10.0.0.1:8998:8+4", "--worker", "10.0.0.2:8998:0+4",
                     "--worker", "10.0.0.3:8998:8"]) == 0
    config = capsys.readouterr().out
    duplex, cascade = (config.split(f"backend {e}\n")[1].split("\nbackend ")[0] for e in ("duplex", "cascade"))
    assert "server w0 10.0.0.1:8998 maxconn 8 check" in duplex and "server w0 10.0.0.1:8998 maxconn 4 track duplex/w0" \
        in cascade
    assert "w1" not in duplex and "server w1 10.0.0.2:8998 maxconn 4 check" in cascade
    assert "server w2 10.0.0.3:8998 maxconn 8 check" in duplex and "w2" not in cascade
    assert "X-Duplex-Engine duplex" in duplex and "X-Duplex-Engine cascade" in cascade
    assert "url_param(mode),url_dec if { path /ws }" in config and "url_param(model),url_dec if { path /v1/realtime }" \
        in config and "str(duplex) if { path /api/chat }" in config
    assert "use_backend duplex if conversation { be_conn_free(duplex) gt 0 }" in config   # auto: duplex first
    assert "return status 501" not in config
    check = haproxy_check(config, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("duplex,cascade", [(8, 4), (0, 4), (8, 0)])
def test_lb_config_by_dns_follows_each_engine_and_is_accepted_by_haproxy(duplex: int, cascade: int, tmp_path: Path,
                                                                          capsys):
    assert cli.main(["lb-config", "--dns", "w.svc:8998", "--dns-slots", str(duplex), "--dns-cascade-slots",
                     str(cascade), "--resolver", "10.0.0.10:53"]) == 0
    config = capsys.readouterr().out
    for engine, slots in (("duplex", duplex), ("cascade", cascade)):
        if slots:
            assert f"backend {engine}\n" in config and f"maxconn {slots} resolvers cluster" in config
        else:   # no worker has it: refused by the balancer, never queued for a slot that cannot come
            assert f"backend {engine}\n" not in config and "return status 501" in config
            assert f"serves the {engine} engine\"}}' if conversation wants_{engine}" in config
    check = haproxy_check(config, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_workers_slots_are_duplex_or_duplex_plus_cascade():
    assert WorkerAddress.parse("10.0.0.1:8998:8") == WorkerAddress("10.0.0.1", 8998, 8, 0)
    assert WorkerAddress.parse("[::1]:9001:8+4").slots == 12
    assert WorkerAddress.parse("h:1:0+4") == WorkerAddress("h", 1, 0, 4)
    with pytest.raises(ValueError, match="at least one slot"):
        WorkerAddress.parse("h:1:0+0")
