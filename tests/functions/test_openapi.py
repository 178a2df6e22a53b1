"""The OpenAPI description: valid for Power Platform custom connectors and in step with the registered routes."""
import json
import re
from pathlib import Path

import azure.functions as func
import jsonschema
import pytest

from api import openapi

from .conftest import registered_functions

PROPER_NOUNS = {"Business", "Central", "BC", "Dataverse", "Sales", "OpenAPI", "ID"}
SCHEMA_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "connector"


def _registered_routes() -> set[tuple[str, str]]:
    routes = set()
    for fn in registered_functions().values():
        for raw in fn.get_raw_bindings():
            binding = json.loads(raw)
            if binding["type"] == "httpTrigger":
                for method in binding["methods"]:
                    routes.add(("/" + binding["route"], method.upper()))
    return routes


def _document() -> dict:
    req = func.HttpRequest("GET", "https://sync.example.net/api/openapi.json", body=b"")
    import asyncio
    resp = asyncio.run(function_app_openapi(req))
    assert resp.status_code == 200
    return json.loads(resp.get_body())


def function_app_openapi(req):
    from api.meta import openapi_json
    return openapi_json.build().get_user_function()(req)


def test_every_registered_route_is_described_and_nothing_else():
    registered = _registered_routes()  # imports the app, which declares the operations
    assert openapi.declared_routes() == registered


def _connector_schema() -> dict:
    """Microsoft's schema, with its intent made explicit for a standard draft-04 validator.

    Each object lists the ``x-ms-*`` extensions it supports under ``properties`` and sends every other
    ``x-ms-*`` key to a catch-all ``patternProperties`` entry that matches nothing. Under plain draft-04 rules a
    key matching both must satisfy both, which would reject even the supported extensions (``x-ms-summary`` on a
    parameter). The connector tooling treats listed extensions as allowed, so the catch-all pattern is narrowed
    to exclude the names each object lists - nothing else is changed.
    """
    if not SCHEMA_DIR.exists():
        pytest.fail(f"connector schema folder missing: {SCHEMA_DIR}")
    schema = json.loads((SCHEMA_DIR / "apiDefinition.swagger.schema.json").read_text())

    def narrow(node):
        if isinstance(node, dict):
            listed = [k for k in (node.get("properties") or {}) if k.startswith("x-ms-")]
            patterns = node.get("patternProperties")
            if listed and isinstance(patterns, dict) and "^x-ms-" in patterns:
                alternatives = "|".join(re.escape(k[len("x-ms-"):]) for k in listed)
                patterns[f"^x-ms-(?!(?:{alternatives})$)"] = patterns.pop("^x-ms-")
            for value in node.values():
                narrow(value)
        elif isinstance(node, list):
            for value in node:
                narrow(value)

    narrow(schema)
    return schema


def test_document_passes_the_connector_schema():
    schema = _connector_schema()
    doc = _document()
    jsonschema.Draft4Validator(schema).validate(doc)
    assert doc["host"] == "sync.example.net"
    assert doc["securityDefinitions"]["function_key"] == {"type": "apiKey", "in": "header", "name": "x-functions-key"}


def _walk_schema(schema, where, defs, seen=None):
    seen = seen or set()
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name not in seen:
            seen.add(name)
            yield from _walk_schema(defs[name], f"definitions/{name}", defs, seen)
        return
    for name, sub in (schema.get("properties") or {}).items():
        # A $ref property carries its title and description in the definition it points to.
        yield f"{where}.{name}", defs[sub["$ref"].rsplit("/", 1)[1]] if "$ref" in sub else sub
        yield from _walk_schema(sub, f"{where}.{name}", defs, seen)
    if "items" in schema:
        yield from _walk_schema(schema["items"], f"{where}[]", defs, seen)


def test_certification_string_rules():
    doc = _document()
    assert len(doc["info"]["title"]) <= 30
    assert not re.search(r"\b(api|connector)\b", doc["info"]["title"], re.I)
    defs = doc["definitions"]
    problems = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            where = f"{method.upper()} {path}"
            s = op["summary"]
            capitalised = [w for w in s.split()[1:] if w[0].isupper() and w not in PROPER_NOUNS]
            if len(s) > 80 or "/" in s or not s[-1].isalnum() or not s[0].isupper() or capitalised:
                problems.append(f"{where}: summary {s!r} (sentence case, <= 80 chars, no '/', ends alphanumeric)")
            if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", op["operationId"]):
                problems.append(f"{where}: operationId {op['operationId']!r}")
            if "default" not in op["responses"] or "schema" in op["responses"]["default"]:
                problems.append(f"{where}: needs a 'default' response without schema")
            ok = [c for c in op["responses"] if c.startswith("2")]
            if not ok or not any("schema" in op["responses"][c] for c in ok):
                problems.append(f"{where}: needs a 2xx response with a schema")
            for p in op["parameters"]:
                if not p.get("x-ms-summary") or not p.get("description"):
                    problems.append(f"{where}: parameter {p['name']} lacks x-ms-summary/description")
                if "schema" in p:
                    for name, sub in _walk_schema(p["schema"], p["name"], defs):
                        if not sub.get("x-ms-summary") or not sub.get("description"):
                            problems.append(f"{where}: property {name} lacks x-ms-summary/description")
            for c in ok:
                if "schema" in op["responses"][c]:
                    for name, sub in _walk_schema(op["responses"][c]["schema"], c, defs):
                        if not sub.get("x-ms-summary") or not sub.get("description"):
                            problems.append(f"{where}: response property {name} lacks x-ms-summary/description")
    assert problems == []


def test_operation_ids_are_unique():
    doc = _document()
    ids = [op["operationId"] for methods in doc["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))


def test_schema_check_can_fail():
    validator = jsonschema.Draft4Validator(_connector_schema())
    doc = _document()
    first = next(iter(doc["paths"].values()))
    next(iter(first.values()))["x-ms-unknown-extension"] = True
    assert not validator.is_valid(doc)
    doc = _document()
    del doc["paths"][next(iter(doc["paths"]))][next(iter(first))]["responses"]
    assert not validator.is_valid(doc)


def test_connector_api_properties_pass_the_paconn_schema():
    """connector/apiProperties.json, imported with the OpenAPI description (paconn create --api-prop ...)."""
    text = (SCHEMA_DIR / "paconn-apiProperties.schema.json").read_text()
    schema = json.loads(re.sub(r"\s*//[^\n\"]*\n", "\n", text))  # the upstream file holds one // comment
    props = json.loads((Path(__file__).resolve().parents[2] / "connector" / "apiProperties.json").read_text())
    jsonschema.Draft7Validator(schema).validate(props)
    key = props["properties"]["connectionParameters"]["api_key"]
    assert key["type"] == "securestring"
    # the security definition the connector designer pairs with it
    assert _document()["securityDefinitions"]["function_key"]["name"] == "x-functions-key"
    bad = json.loads(json.dumps(props))
    bad["properties"]["iconBrandColor"] = 7
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)
