"""Endpoints about the service itself: its OpenAPI description and a health check."""
from __future__ import annotations

from urllib.parse import urlsplit

import azure.functions as func

from sync.settings import Settings

from . import openapi
from .http import http_endpoint, json_response

bp = func.Blueprint()

openapi.operation(
    "/openapi.json", "get", operation_id="GetOpenApiDescription", visibility="internal",
    summary="Get the OpenAPI description",
    description="The Swagger 2.0 description of every operation of this service, ready to import as a custom connector.",
    responses={"200": ("The OpenAPI 2.0 document.", openapi.obj("Document", "The Swagger 2.0 document.", {}))},
)


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"])
@http_endpoint
async def openapi_json(req: func.HttpRequest) -> func.HttpResponse:
    url = urlsplit(req.url)
    host = url.netloc or None
    return json_response(openapi.document(host=host, scheme=url.scheme or "https"))


openapi.operation(
    "/health", "get", operation_id="GetHealth", visibility="advanced",
    summary="Check the service configuration",
    description="Says whether the app settings are complete and valid, naming the first wrong setting if not.",
    responses={"200": ("The service is configured.", openapi.obj("Health", "Configuration status.", {
        "status": openapi.prop("string", "Status", "'ok' when every setting is valid."),
    }))},
)


@bp.function_name("health")
@bp.route(route="health", methods=["GET"])
@http_endpoint
async def health(req: func.HttpRequest) -> func.HttpResponse:
    # Read the settings afresh (not the cached copy) so a fixed setting shows at once.
    Settings.from_env()
    return json_response({"status": "ok"})
