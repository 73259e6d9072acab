"""Checks the deployment files against each other and against the code:

- every variable compose sets for a program is one that program reads, and every
  address a program needs (database, broker, cache, Loki) is set;
- the Grafana provisioning files and the dashboard parse, and every panel's datasource
  is a provisioned one;
- the Vector, Loki and Prometheus files parse;
- the image runs its programs as a user that is not root, and compose does not
  override that for them.

Run by scripts/check-deploy.sh with the tools virtualenv's Python (ruamel.yaml).
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


def struct_fields(source, name):
    """Field names of `pub struct <name> { ... }`, following #[serde(flatten)] and
    #[serde(skip)] fields (read separately). The Kubernetes manifests are held to the
    binaries' own lists instead (`ApiConfig::variables()`, in tests/integration/deploy.rs)."""
    match = re.search(r"(?:pub )?struct " + name + r" \{(.*?)\n\}", source, re.S)
    if not match:
        fail(f"struct {name} not found")
        return set()
    body = match.group(1)
    fields = set()
    flatten = False
    for line in body.splitlines():
        line = line.strip()
        # The logging settings are read from the same variables, through a field that
        # serde skips (config.rs) or flattens.
        if line.startswith("#[serde(") and ("flatten" in line or "skip" in line):
            flatten = True
            continue
        field = re.match(r"(?:pub )?(\w+): (\w+)", line)
        if field:
            if flatten:
                fields |= struct_fields(source, field.group(2))
                flatten = False
            else:
                fields.add(field.group(1).upper())
    return fields


config = (ROOT / "shared/src/config.rs").read_text()
simulator = (ROOT / "shared/examples/customer_simulator.rs").read_text()
reads = {
    "api": struct_fields(config, "ApiConfig"),
    "outbox-relay": struct_fields(config, "RelayConfig"),
    "saga-worker": struct_fields(config, "WorkerConfig"),
    "customer-simulator": struct_fields(simulator + config, "Config"),
}
needs = {
    "api": {"DATABASE_URL", "REDIS_URL", "LOKI_URL"},
    "outbox-relay": {"DATABASE_URL", "AMQP_URL", "LOKI_URL"},
    "saga-worker": {"DATABASE_URL", "AMQP_URL", "REDIS_URL", "LOKI_URL"},
    "customer-simulator": {"AMQP_URL", "LOKI_URL"},
}

compose = yaml.load((ROOT / "compose.yaml").read_text())
programs_seen = set()
for name, service in compose["services"].items():
    command = service.get("command") or []
    program = command[0] if command else None
    if program not in reads:
        continue
    programs_seen.add(program)
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for variable in environment:
        if variable not in reads[program]:
            fail(f"compose sets {variable} for {name}, but {program} does not read it")
    for variable in needs[program] - set(environment):
        fail(f"compose does not set {variable} for {name}")
    if "container_name" in service and program in ("outbox-relay", "saga-worker"):
        fail(f"{name} has a container_name: it could not be scaled")
for program in reads:
    if program not in programs_seen:
        fail(f"no compose service runs {program}")

provisioned = set()
for path in (ROOT / "grafana/provisioning/datasources").glob("*.yaml"):
    for source in yaml.load(path.read_text()).get("datasources", []):
        provisioned.add(source["uid"])
for path in (ROOT / "grafana/provisioning/dashboards").glob("*.yaml"):
    yaml.load(path.read_text())
for path in (ROOT / "grafana/dashboards").glob("*.json"):
    dashboard = json.loads(path.read_text())
    for panel in dashboard["panels"]:
        for holder in [panel] + panel.get("targets", []):
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

for path in ["vector/vector.yaml", "loki/loki.yaml", "prometheus/prometheus.yml"]:
    yaml.load((ROOT / path).read_text())

# Non-root: the runtime stage (the last FROM) switches to a named, non-root user, and no
# service built from this image asks for another one.
dockerfile = (ROOT / "Dockerfile").read_text()
runtime = dockerfile.rsplit("\nFROM ", 1)[-1]
users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
if not users or users[-1] in ("root", "0", "0:0"):
    fail(f"Dockerfile: the runtime stage runs as {users[-1] if users else 'root (no USER)'}")
for name, service in yaml.load((ROOT / "compose.yaml").read_text())["services"].items():
    if "build" in service or str(service.get("image", "")).startswith("order-service"):
        if str(service.get("user", "")).split(":")[0] in ("root", "0"):
            fail(f"compose.yaml: service {name} runs as root")

if failures:
    print("\n".join(f"check_deploy: {f}" for f in failures), file=sys.stderr)
    sys.exit(1)
print(f"check_deploy: compose variables, Grafana datasources and configs agree ({len(provisioned)} datasources)")
