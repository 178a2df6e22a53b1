"""The OpenAPI 2.0 (Swagger) description of every HTTP function, as Power Platform custom connectors import it.

Each endpoint module declares its operation next to its function with ``operation(...)``; ``document()`` assembles
them. A test validates the result against Microsoft's connector schema and compares its paths with the routes the
app registers, so the description cannot drift from the code.
"""
from __future__ import annotations

import copy
from typing import Any

TITLE = "BC Dataverse Sync"
VERSION = "1.0.0"

_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {}

ERROR = {
    "type": "object",
    "description": "What went wrong; nothing was written for a 4xx.",
    "x-ms-summary": "Error",
    "properties": {
        "error": {
            "type": "object",
            "x-ms-summary": "Error",
            "description": "The error.",
            "properties": {
                "code": {"type": "string", "x-ms-summary": "Code", "description": "Stable, machine-readable code."},
                "message": {"type": "string", "x-ms-summary": "Message", "description": "What happened, for people."},
            },
        }
    },
}

DEFINITIONS: dict[str, Any] = {"Error": ERROR}


def prop(kind: str, summary: str, description: str, **extra: Any) -> dict[str, Any]:
    """A schema property with the title and description the connector designer shows."""
    return {"type": kind, "x-ms-summary": summary, "description": description, **extra}


def obj(summary: str, description: str, properties: dict[str, Any], required: list[str] | None = None,
        **extra: Any) -> dict[str, Any]:
    schema = {"type": "object", "x-ms-summary": summary, "description": description, "properties": properties,
              **extra}
    if required:
        schema["required"] = required
    return schema


def array(summary: str, description: str, items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "x-ms-summary": summary, "description": description, "items": items}


def body_param(schema: dict[str, Any], description: str = "The request.") -> dict[str, Any]:
    return {"name": "body", "in": "body", "required": True, "x-ms-summary": "Request",
            "description": description, "schema": schema}


def path_param(name: str, summary: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "type": "string", "x-ms-summary": summary,
            "description": description, "x-ms-url-encoding": "single", **extra}


def query_param(name: str, summary: str, description: str, *, required: bool = False, kind: str = "string",
                visibility: str = "advanced", **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "type": kind, "x-ms-summary": summary,
            "description": description, "x-ms-visibility": "important" if required else visibility, **extra}


def operation(path: str, method: str, *, operation_id: str, summary: str, description: str,
              responses: dict[str, tuple[str, dict[str, Any] | None]], parameters: list[dict[str, Any]] | None = None,
              visibility: str = "important", tags: list[str] | None = None) -> None:
    """Declare one operation. ``path`` is relative to ``/api``; ``responses`` maps status -> (text, schema)."""
    resp: dict[str, Any] = {}
    for status, (text, schema) in responses.items():
        entry: dict[str, Any] = {"description": text}
        if schema is not None:
            entry["schema"] = schema
        resp[status] = entry
    resp["default"] = {"description": "Error: the JSON body's 'error' says what went wrong."}
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "x-ms-visibility": visibility,
        "parameters": parameters or [],
        "responses": resp,
    }
    if tags:
        op["tags"] = tags
    key = (path, method.lower())
    if key in _OPERATIONS:
        raise ValueError(f"operation {method} {path} declared twice")
    _OPERATIONS[key] = op


def define(name: str, schema: dict[str, Any]) -> dict[str, str]:
    """Register a shared schema under ``definitions`` and return a ``$ref`` to it."""
    DEFINITIONS[name] = schema
    return {"$ref": f"#/definitions/{name}"}


def document(host: str | None = None, scheme: str = "https") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), op in sorted(_OPERATIONS.items()):
        paths.setdefault(path, {})[method] = copy.deepcopy(op)
    doc: dict[str, Any] = {
        "swagger": "2.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": ("Couple and synchronize records between Dynamics 365 Business Central and Dataverse "
                            "(Dynamics 365 Sales): couple, synchronize now, uncouple, table mappings, jobs and "
                            "synchronization errors."),
        },
        "basePath": "/api",
        "schemes": [scheme],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": paths,
        "definitions": copy.deepcopy(DEFINITIONS),
        "securityDefinitions": {
            "function_key": {"type": "apiKey", "in": "header", "name": "x-functions-key"}
        },
        "security": [{"function_key": []}],
    }
    if host:
        doc["host"] = host
    return doc


def declared_routes() -> set[tuple[str, str]]:
    """(path without /api, METHOD) of every declared operation."""
    return {(path, method.upper()) for path, method in _OPERATIONS}
