"""Validates the objects of operators' kinds in built manifests against the operators'
own CRD schemas, vendored in deploy/kubernetes/schemas/ from each project's
config/crd/bases/ at a release tag:

- keda-v2.20.2/: github.com/kedacore/keda, tag v2.20.2, commit
  68a5b5028f35b22d50597c69819ab32c4e92f21a (Apache-2.0);
- cloudnative-pg-v1.30.0/: github.com/cloudnative-pg/cloudnative-pg, tag v1.30.0, commit
  4b5e244a7d031f67e025c83c1555e7726ecbbfa1 (Apache-2.0);
- rabbitmq-cluster-operator-v2.22.3/: github.com/rabbitmq/cluster-operator, tag v2.22.3,
  commit 03e0b49c077a9c8d926fb4c8cbe2dd0bbdffd539 (MPL-2.0).

    check_crds.py BUILT.yaml...

kubernetes-validate knows only the built-in kinds; this covers the rest: an object of a
group below with no vendored schema, or one that breaks its schema, fails. Run by
scripts/check-deploy.sh.
"""

import sys
from pathlib import Path

import jsonschema
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "deploy/kubernetes/schemas"
GROUPS = ("keda.sh/", "postgresql.cnpg.io/", "rabbitmq.com/")
yaml = YAML(typ="safe")


def strict(schema):
    """The schema with `additionalProperties: false` on every object that lists its
    properties and does not preserve unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


schemas = {}
for crd_file in SCHEMAS.glob("*/*.yaml"):
    crd = yaml.load(crd_file.read_text())
    for version in crd["spec"]["versions"]:
        kind = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
        schemas[kind] = version["schema"]["openAPIV3Schema"]

failures, checked = [], 0
for path in sys.argv[1:]:
    for doc in yaml.load_all(Path(path).read_text()):
        if not doc or not doc.get("apiVersion", "").startswith(GROUPS):
            continue
        key = (doc["apiVersion"], doc["kind"])
        if key not in schemas:
            failures.append(f"{path}: no vendored schema for {key}")
            continue
        # Strict, like kubernetes-validate --strict: a property the schema does not
        # declare is an error (a misspelt field would otherwise be ignored by the operator).
        validator = jsonschema.Draft7Validator(strict(schemas[key]))
        for error in validator.iter_errors(doc):
            failures.append(f"{path}: {doc['kind']}/{doc['metadata']['name']}: {error.json_path}: {error.message}")
        checked += 1


if failures:
    print("\n".join(f"check_crds: {f}" for f in failures), file=sys.stderr)
    sys.exit(1)
kinds = sorted({kind for _, kind in schemas})
print(f"check_crds: {checked} objects valid against the vendored CRD schemas ({', '.join(kinds)})")
