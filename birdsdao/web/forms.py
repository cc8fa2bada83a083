"""Parsing and validating request fields, shared by every view (form data first, JSON bodies too)."""
from __future__ import annotations

import json

from flask import request

from ..errors import APIError


def _payload() -> dict:
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # silent=True only silences ValueError; very deep nesting raises this instead
            body = None
        if not isinstance(body, dict):
            raise APIError(400, "bad_field", "the JSON body must be an object")
        return body
    return request.values


def text_field(name: str, *, required: bool = False, default: str | None = None, max_len: int = 10_000) -> str | None:
    value = _payload().get(name)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if required:
            raise APIError(400, "missing_field", f"'{name}' is required")
        return default
    if not isinstance(value, str):
        value = str(value)
    if len(value) > max_len:
        raise APIError(400, "bad_field", f"'{name}' is longer than {max_len} characters")
    if "\x00" in value:
        raise APIError(400, "bad_field", f"'{name}' contains a NUL character")
    return value


def raw_field(name: str):
    """A field as sent (a string from a form, any JSON value from a JSON body), None when absent or blank."""
    value = _payload().get(name)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return value


def int_field(name: str, default: int, *, lo: int, hi: int) -> int:
    raw = _payload().get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON Infinity or 1e400
        raise APIError(400, "bad_field", f"'{name}' must be an integer") from None
    if not lo <= value <= hi:
        raise APIError(400, "bad_field", f"'{name}' must be between {lo} and {hi}")
    return value


def bool_field(name: str, default: bool) -> bool:
    raw = _payload().get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise APIError(400, "bad_field", f"'{name}' must be 0 or 1")


def choice_field(name: str, choices, default: str) -> str:
    value = text_field(name, default=default, max_len=64)
    if value not in choices:
        raise APIError(400, "bad_field", f"'{name}' must be one of: {', '.join(sorted(choices))}")
    return value


def json_field(name: str, default=None, max_len: int = 200_000):
    raw = _payload().get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, (list, dict)):
        return raw
    try:
        return json.loads(text_field(name, max_len=max_len))
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise APIError(400, "bad_field", f"'{name}' must be valid JSON") from None


def files_field(name: str, *, required: bool = True, max_count: int = 50, missing_code: str = "missing_field") -> list:
    files = [f for f in request.files.getlist(name) if f and f.filename is not None]
    if required and not files:
        raise APIError(400, missing_code, f"'{name}' file is required")
    if len(files) > max_count:
        raise APIError(400, "bad_field", f"at most {max_count} files in '{name}'")
    return files


def read_upload(storage) -> bytes:
    """The bytes of one uploaded file (size already bounded by MAX_CONTENT_LENGTH). Closed at once: large
    uploads are spooled to temporary files that would otherwise wait for the garbage collector."""
    try:
        return storage.read()
    finally:
        storage.close()


def upload_bytes(name: str) -> bytes:
    """The bytes of the single required upload ``name`` (400 ``no_image`` when absent)."""
    return read_upload(files_field(name, max_count=1, missing_code="no_image")[0])
