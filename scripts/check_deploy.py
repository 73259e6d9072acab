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
print(f"check_deploy: Grafana datasources, the Redis bound, the image user and configs agree ({len(provisioned)} datasources)")
