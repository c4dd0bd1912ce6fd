"""Checks that what deploy/ hands Homeostat is what Homeostat accepts, and
that the Collector routes to the replicas the manifests define.

- Every ConfigMap's homeostat.toml and rules, in deploy/kubernetes/ and in
  the rendered Helm chart, are written out and checked by the binary itself
  (`homeostat check --config FILE RULES`).
- The Collector configuration exports every signal through `loadbalancing`
  with `routing_key: service`, resolving the headless Service of
  deploy/kubernetes/service.yaml on the OTLP/gRPC port.

Usage: check_manifests.py HOMEOSTAT_BINARY RENDERED_CHART.yaml
"""

import pathlib
import subprocess
import sys
import tempfile

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent


def documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def check_configmaps(binary, docs, origin):
    maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    config = next((m for m in maps.values() if "homeostat.toml" in m), None)
    rules = next((m for m in maps.values() if any(k.endswith(".toml") and k != "homeostat.toml" for k in m)), None)
    if config is None or rules is None:
        sys.exit(f"{origin}: no ConfigMap with homeostat.toml and one with rules")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "homeostat.toml").write_text(config["homeostat.toml"])
        (tmp / "rules").mkdir()
        for name, text in rules.items():
            (tmp / "rules" / name).write_text(text)
        done = subprocess.run(
            [binary, "check", "--config", str(tmp / "homeostat.toml"), str(tmp / "rules")],
            capture_output=True, text=True,
        )
        print(f"{origin}: {done.stdout.strip()}")
        if done.returncode != 0:
            sys.exit(f"{origin}: homeostat check failed:\n{done.stdout}{done.stderr}")


def check_collector():
    config = documents(DEPLOY / "collector" / "otel-collector.yaml")[0]
    lb = config["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "service", "the Collector must route by service"
    services = documents(DEPLOY / "kubernetes" / "service.yaml")
    headless = next(s for s in services if s["spec"].get("clusterIP") == "None")
    name, namespace = headless["metadata"]["name"], headless["metadata"]["namespace"]
    expected = f"{name}.{namespace}.svc.cluster.local"
    dns = lb["resolver"]["dns"]
    assert dns["hostname"] == expected, f"resolver {dns['hostname']}, headless Service {expected}"
    grpc = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "otlp-grpc")
    assert dns["port"] == grpc, f"resolver port {dns['port']}, Service OTLP/gRPC port {grpc}"
    for signal in ("traces", "metrics", "logs"):
        pipeline = config["service"]["pipelines"][signal]
        assert pipeline["exporters"] == ["loadbalancing"], f"{signal} bypasses the load balancer"
    print(f"collector: every signal routed by service to {expected}:{grpc}")


def main():
    binary, rendered = sys.argv[1], sys.argv[2]
    check_configmaps(binary, documents(DEPLOY / "kubernetes" / "configmap.yaml"), "deploy/kubernetes")
    check_configmaps(binary, documents(rendered), "helm template")
    check_collector()


if __name__ == "__main__":
    main()
