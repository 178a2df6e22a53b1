"""Multipart ``$batch`` bodies of the Dataverse Web API: parse requests, write responses (apis.md A12).

Shapes follow Microsoft's documented example (samples/dataverse_batch_request.txt / _response.txt): a
``multipart/mixed`` body of ``application/http`` parts, changesets as nested ``multipart/mixed`` parts whose
requests carry ``Content-ID``. Parsing accepts CRLF or LF line ends and a request line with or without the space
after the method (the doc's own example omits it).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus

from emulators.server import CaseInsensitiveDict

_REQUEST_LINE = re.compile(r"^(GET|POST|PATCH|PUT|DELETE)\s*(\S+)\s+HTTP/1\.[01]\s*$")
_BOUNDARY = re.compile(r"boundary=\"?([^\";]+)\"?", re.IGNORECASE)


class BatchFormatError(ValueError):
    """The batch body can't be read: the service answers 400 for the whole batch."""


@dataclass
class BatchRequest:
    method: str
    url: str
    headers: CaseInsensitiveDict
    body: bytes
    content_id: str | None = None


@dataclass
class Changeset:
    requests: list[BatchRequest] = field(default_factory=list)


@dataclass
class PartResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    content_id: str | None = None


@dataclass
class ChangesetResponse:
    parts: list[PartResponse]


def boundary_of(content_type: str | None) -> str:
    m = _BOUNDARY.search(content_type or "")
    if not m or not (content_type or "").lower().startswith("multipart/mixed"):
        raise BatchFormatError("The batch request must have a 'Content-Type: multipart/mixed; boundary=...' header.")
    return m.group(1).strip()


def _split(text: str, boundary: str) -> list[str]:
    delimiter, closing = "--" + boundary, "--" + boundary + "--"
    parts: list[list[str]] | None = None
    current: list[str] | None = None
    closed = False
    for line in text.split("\n"):
        stripped = line.rstrip()
        if stripped == closing:
            if parts is None or current is None:
                raise BatchFormatError(f"The multipart body has no part before '--{boundary}--'.")
            parts.append(current)
            closed = True
            break
        if stripped == delimiter:
            if parts is None:
                parts = []
            elif current is not None:
                parts.append(current)
            current = []
            continue
        if current is not None:
            current.append(line)
    if parts is None or not closed:
        raise BatchFormatError(f"The multipart body is not terminated by '--{boundary}--'.")
    return ["\n".join(p) for p in parts]


def _headers_and_rest(text: str) -> tuple[CaseInsensitiveDict, str]:
    headers = CaseInsensitiveDict()
    lines = text.split("\n")
    i = 0
    while i < len(lines) and lines[i].strip() != "":
        name, sep, value = lines[i].partition(":")
        if not sep:
            raise BatchFormatError(f"Invalid header line in batch part: {lines[i]!r}")
        headers[name.strip()] = value.strip()
        i += 1
    return headers, "\n".join(lines[i + 1:])


def _parse_http(part_headers: CaseInsensitiveDict, content: str) -> BatchRequest:
    lines = content.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise BatchFormatError("An application/http batch part has no request line.")
    m = _REQUEST_LINE.match(lines[0].strip())
    if not m:
        raise BatchFormatError(f"Invalid request line in batch part: {lines[0]!r}")
    headers, body = _headers_and_rest("\n".join(lines[1:]))
    body = body.strip("\n")
    content_id = part_headers.get("Content-ID") or headers.get("Content-ID")
    return BatchRequest(m.group(1), m.group(2), headers, body.encode("utf-8"), content_id)


def parse_batch(body: bytes, content_type: str | None) -> list[BatchRequest | Changeset]:
    boundary = boundary_of(content_type)
    try:
        text = body.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise BatchFormatError("The batch body is not valid UTF-8.") from None
    items: list[BatchRequest | Changeset] = []
    for part in _split(text, boundary):
        headers, content = _headers_and_rest(part)
        ctype = (headers.get("Content-Type") or "").lower()
        if ctype.startswith("multipart/mixed"):
            changeset = Changeset()
            for inner in _split(content, boundary_of(headers.get("Content-Type"))):
                ih, ic = _headers_and_rest(inner)
                if not (ih.get("Content-Type") or "").lower().startswith("application/http"):
                    raise BatchFormatError("Changeset parts must be 'Content-Type: application/http'.")
                changeset.requests.append(_parse_http(ih, ic))
            items.append(changeset)
        elif ctype.startswith("application/http"):
            items.append(_parse_http(headers, content))
        else:
            raise BatchFormatError(f"Unsupported batch part Content-Type '{headers.get('Content-Type')}'.")
    return items


def _http_part(resp: PartResponse) -> list[str]:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if resp.content_id is not None:
        lines.append(f"Content-ID: {resp.content_id}")
    lines.append("")
    reason = HTTPStatus(resp.status).phrase
    lines.append(f"HTTP/1.1 {resp.status} {reason}")
    for k, v in resp.headers.items():
        if k.lower() != "content-length":
            lines.append(f"{k}: {v}")
    lines.append("")
    lines.append(resp.body.decode("utf-8") if resp.body else "")
    return lines


def format_batch_response(items: list[PartResponse | ChangesetResponse]) -> tuple[str, bytes]:
    """``(content_type, body)`` of the batch response, CRLF line ends like the service."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    lines: list[str] = []
    for item in items:
        lines.append(f"--{boundary}")
        if isinstance(item, ChangesetResponse):
            cs = f"changesetresponse_{uuid.uuid4()}"
            lines.append(f"Content-Type: multipart/mixed; boundary={cs}")
            lines.append("")
            for part in item.parts:
                lines.append(f"--{cs}")
                lines.extend(_http_part(part))
            lines.append(f"--{cs}--")
        else:
            lines.extend(_http_part(item))
    lines.append(f"--{boundary}--")
    lines.append("")
    return f"multipart/mixed; boundary={boundary}", "\r\n".join(lines).encode("utf-8")


def parse_batch_response(body: bytes, content_type: str) -> list[PartResponse | ChangesetResponse]:
    """Read a batch response (for tests and clients): parts in order, changesets grouped."""
    boundary = boundary_of(content_type)
    text = body.decode("utf-8").replace("\r\n", "\n")
    out: list[PartResponse | ChangesetResponse] = []

    def http(headers: CaseInsensitiveDict, content: str) -> PartResponse:
        lines = content.split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        status = int(lines[0].split()[1])
        h, rest = _headers_and_rest("\n".join(lines[1:]))
        return PartResponse(status, h, rest.strip("\n").encode("utf-8"), headers.get("Content-ID"))

    for part in _split(text, boundary):
        headers, content = _headers_and_rest(part)
        if (headers.get("Content-Type") or "").lower().startswith("multipart/mixed"):
            inner = [http(*_headers_and_rest(p)) for p in _split(content, boundary_of(headers.get("Content-Type")))]
            out.append(ChangesetResponse(inner))
        else:
            out.append(http(headers, content))
    return out
