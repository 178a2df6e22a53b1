"""Pure helpers for Table Storage keys and continuation tokens (no I/O)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from typing import Any

from sync.errors import RequestError

# --- keys (pure) ------------------------------------------------------------------------------------------------------
MAX_KEY_CHARS = 512  # the service allows 1 KiB (UTF-16: 512 chars); ASCII keys of <= 512 chars are always inside
_KEY_SAFE = re.compile(r"[A-Za-z0-9._-]")
_ENCODED_RE = re.compile(r"(?:[A-Za-z0-9._-]|~[0-9A-F]{2})+")
_FORBIDDEN_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


def encode_key_part(text: str, *, what: str = "name") -> str:
    """Encode ``text`` (e.g. a mapping name) for a PartitionKey/RowKey, reversibly.

    Letters, digits, ``.``, ``_`` and ``-`` stay as they are (so keys stay readable in Storage Explorer); every
    other character becomes ``~XX`` per UTF-8 byte. The result never holds ``/ \\ # ?``, control characters,
    ``%`` (mishandled in URLs by some tools) or ``'`` (OData quoting). Raises ``RequestError`` if ``text`` is
    empty or its key would be longer than ``MAX_KEY_CHARS``.
    """
    if not isinstance(text, str) or not text.strip():
        raise RequestError(f"{what} must be a non-empty string",
                           details={what: text if isinstance(text, str) else None})
    out = []
    try:
        for ch in text:
            if _KEY_SAFE.fullmatch(ch):
                out.append(ch)
            else:
                out.extend(f"~{b:02X}" for b in ch.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        raise RequestError(f"{what} is not valid text", details={what: repr(text)[:100]}) from None
    key = "".join(out)
    if len(key) > MAX_KEY_CHARS:
        raise RequestError(f"{what} is too long", details={what: text[:100]})
    return key


def decode_key_part(key: str, *, what: str = "key") -> str:
    """Inverse of ``encode_key_part``; only canonical encodings are accepted (else ``RequestError``)."""
    if not isinstance(key, str) or not _ENCODED_RE.fullmatch(key) or len(key) > MAX_KEY_CHARS:
        raise RequestError(f"invalid {what}", details={what: key if isinstance(key, str) else None})
    raw = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "~":
            raw.append(int(key[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(ord(key[i]))
            i += 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"invalid {what}", details={what: key}) from None
    if encode_key_part(text) != key:  # e.g. "~41" for "A": not how we write it
        raise RequestError(f"invalid {what}", details={what: key})
    return text


def check_key(key: Any) -> str:
    """``key`` if it is a string the service accepts as PartitionKey/RowKey, else ``RequestError``."""
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or _FORBIDDEN_KEY_CHARS.search(key):
        raise RequestError("invalid table key")
    return key


_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NIL_GUID = "00000000-0000-0000-0000-000000000000"


def normalize_guid(value: Any, *, what: str = "id") -> str:
    """A record id as lower-case hyphenated GUID (BC SystemId, Dataverse row id).

    Accepts any case and optional braces (AL's ``Format(Guid)``); rejects anything else, and the nil GUID
    (BC's "no value"), with ``RequestError``.
    """
    text = value.strip() if isinstance(value, str) else None
    if text and text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if not text or not _GUID_RE.fullmatch(text):
        raise RequestError(f"{what} must be a GUID", details={what: value if isinstance(value, str) else repr(value)})
    text = str(uuid.UUID(text))
    if text == _NIL_GUID:
        raise RequestError(f"{what} must not be the empty GUID", details={what: value})
    return text


# --- continuation tokens (pure) ---------------------------------------------------------------------------------------
MAX_TOKEN_CHARS = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _checksum(scope: str, payload: bytes) -> str:
    return _b64(hashlib.sha256(scope.encode("utf-8") + b"\x00" + payload).digest()[:9])


def encode_continuation(scope: str, token: dict | None) -> str | None:
    """The SDK's ``{"PartitionKey", "RowKey"}`` continuation as an opaque, URL-safe string bound to ``scope``.

    ``scope`` names the listing (table, partition, filter); a token is only accepted back for the same scope.
    The checksum catches corrupted, edited or misplaced tokens; it is not a secret (a forged token can only
    position a read inside the caller's own listing, whose filter is rebuilt server-side).
    """
    if not token:
        return None
    body = {"pk": token.get("PartitionKey"), "rk": token.get("RowKey")}
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return f"{_b64(payload)}.{_checksum(scope, payload)}"


def decode_continuation(scope: str, text: str | None) -> dict | None:
    """Inverse of ``encode_continuation``; a token that was not issued for ``scope`` raises ``RequestError``."""
    if text is None or text == "":
        return None
    bad = RequestError("invalid continuation token", code="InvalidContinuationToken")
    if not isinstance(text, str) or len(text) > MAX_TOKEN_CHARS or text.count(".") != 1:
        raise bad
    data, check = text.split(".")
    try:
        payload = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        if not re.fullmatch(r"[A-Za-z0-9_-]+", data) or _b64(payload) != data:
            raise bad
        if _checksum(scope, payload) != check:
            raise bad
        body = json.loads(payload)
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(body, dict) or set(body) != {"pk", "rk"}:
        raise bad
    out = {}
    for name, value in (("PartitionKey", body["pk"]), ("RowKey", body["rk"])):
        if value is None:
            continue
        try:
            out[name] = check_key(value)
        except RequestError:
            raise bad from None
    if not out:
        raise bad
    return out
