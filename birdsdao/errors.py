"""``APIError(status, code, message)``: the error model code raises; it imports no Flask (web/errors.py answers it)."""
from __future__ import annotations


class APIError(Exception):
    """Raise anywhere (model code included); the web layer's handler turns it into the contract's JSON."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return {"error": self.message, "code": self.code}
