"""Checks the deployment files against each other and against the code:

- the Grafana provisioning files and the dashboard parse, and every panel's datasource
  is a provisioned one;
- the Vector, Loki and Prometheus files parse;
- the image runs its programs as a user that is not root, and compose does not
  override that for them.

Run by scripts/check-deploy.sh with the tools virtualenv's Python (ruamel.yaml). The
wiring of compose and the manifests to the code (the variables each program reads) is
checked in Rust, against the config structs themselves: shared/tests/integration/deploy.rs.
"""

import json
import re
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
yaml = YAML(typ="safe")
failures = []


def fail(message):
    failures.append(message)


compose = yaml.load((ROOT / "compose.yaml").read_text())

provisioned = set()
for path in (ROOT / "grafana/provisioning/datasources").glob("*.yaml"):
    for source in yaml.load(path.read_text()).get("datasources", []):
        provisioned.add(source["uid"])
for path in (ROOT / "grafana/provisioning/dashboards").glob("*.yaml"):
    yaml.load(path.read_text())
for path in (ROOT / "grafana/dashboards").glob("*.json"):
    dashboard = json.loads(path.read_text())
    for panel in dashboard["panels"]:
        for holder in [panel, *panel.get("targets", [])]:
            uid = (holder.get("datasource") or {}).get("uid")
            if uid and uid not in provisioned:
                fail(f"{path.name}: panel {panel['title']!r} uses datasource {uid!r}, which is not provisioned")

# The cache is bounded by Redis too, with a policy that may evict any key: the cache is
# correct whatever key goes (a lost generation restarts from the server's clock), and a
# volatile-* policy would make Redis refuse writes once keys without a TTL fill it.
redis_command = compose["services"]["redis"].get("command") or []
if "--maxmemory" not in redis_command:
    fail("compose.yaml: redis runs without --maxmemory")
policy = redis_command[redis_command.index("--maxmemory-policy") + 1] if "--maxmemory-policy" in redis_command else None
if policy not in ("allkeys-lru", "allkeys-lfu", "allkeys-random"):
    fail(f"compose.yaml: redis --maxmemory-policy is {policy!r}; it must be an allkeys-* policy")

for path in ["vector/vector.yaml", "loki/loki.yaml", "prometheus/prometheus.yml", "grafana/tempo.yaml"]:
    yaml.load((ROOT / path).read_text())

# Spans: every program exports to Tempo, on a port Tempo receives OTLP on for the
# protocol it speaks, and Grafana links traces and log lines both ways.
tempo = yaml.load((ROOT / "grafana/tempo.yaml").read_text())
protocols = tempo["distributor"]["receivers"]["otlp"]["protocols"]
receives = {name: int(spec["endpoint"].rsplit(":", 1)[1]) for name, spec in protocols.items()}
if any(not spec["endpoint"].startswith("0.0.0.0:") for spec in protocols.values()):
    fail("grafana/tempo.yaml: an OTLP receiver listens on localhost only; the programs could not reach it")
if "tempo" not in compose["services"]:
    fail("compose.yaml: no tempo service")
for name, service in compose["services"].items():
    command = service.get("command") or []
    if not command or command[0] not in ("api", "outbox-relay", "saga-worker", "customer-simulator"):
        continue
    environment = service.get("environment") or {}
    endpoint = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(environment.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")))
    protocol = re.sub(
        r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(environment.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
    )
    match = re.fullmatch(r"http://tempo:(\d+)", endpoint)
    wanted = receives.get("grpc" if protocol == "grpc" else "http")
    if not match or int(match.group(1)) != wanted:
        fail(f"compose.yaml: {name} exports spans to {endpoint!r} ({protocol}); Tempo receives that on tempo:{wanted}")
sources = {}
for path in (ROOT / "grafana/provisioning/datasources").glob("*.yaml"):
    for source in yaml.load(path.read_text()).get("datasources", []):
        sources[source["uid"]] = source
linked_logs = ((sources.get("tempo") or {}).get("jsonData") or {}).get("tracesToLogsV2", {}).get("datasourceUid")
linked_traces = [
    f.get("datasourceUid") for f in ((sources.get("loki") or {}).get("jsonData") or {}).get("derivedFields", [])
]
if linked_logs != "loki" or "tempo" not in linked_traces:
    fail(
        "grafana datasources: traces and logs are not linked both ways"
        " (Tempo tracesToLogsV2 → loki, Loki derivedFields → tempo)"
    )

# Non-root: the runtime stage (the last FROM) switches to a named, non-root user, and no
# service built from this image asks for another one.
dockerfile = (ROOT / "Dockerfile").read_text()
runtime = dockerfile.rsplit("\nFROM ", 1)[-1]
users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
if not users or users[-1] in ("root", "0", "0:0"):
    fail(f"Dockerfile: the runtime stage runs as {users[-1] if users else 'root (no USER)'}")
for name, service in yaml.load((ROOT / "compose.yaml").read_text())["services"].items():
    ours = "build" in service or str(service.get("image", "")).startswith("order-service")
    if ours and str(service.get("user", "")).split(":")[0] in ("root", "0"):
        fail(f"compose.yaml: service {name} runs as root")

if failures:
    print("\n".join(f"check_deploy: {f}" for f in failures), file=sys.stderr)
    sys.exit(1)
print(
    "check_deploy: Grafana datasources, the Redis bound, the image user and configs agree"
    f" ({len(provisioned)} datasources)"
)
