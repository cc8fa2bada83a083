"""The name rules for knowledge bases and documents (shared/API.md): the ONE place that decides what a
stranger's name may be, applied before any file-system access."""
from __future__ import annotations

import hashlib
import re
import unicodedata

from ..errors import APIError

# Letters, digits, "_", "-" and CJK ideographs (basic + extension A + compatibility), 1–64 characters.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
KB_NAME_RE = re.compile(rf"[A-Za-z0-9_\-{_CJK}]{{1,64}}")
# A document name is a sanitised file name: the same set plus ".", " ", "(", ")" and fullwidth punctuation
# people use in Chinese titles; never starting with "." and never containing "..".
_DOC_CHARS = rf"A-Za-z0-9_\-{_CJK}. ()（）《》【】，、"
DOC_NAME_RE = re.compile(rf"[{_DOC_CHARS}]{{1,128}}")
_DOC_BAD = re.compile(rf"[^{_DOC_CHARS}]+")


def validate_kb_name(name) -> str:
    """Return ``name`` when it follows the kb_name rule, else raise 400 ``bad_name``."""
    if not isinstance(name, str) or not KB_NAME_RE.fullmatch(name):
        raise APIError(400, "bad_name", "kb_name: 1–64 letters, digits, '_', '-' or CJK characters")
    return name


def validate_doc_name(name) -> str:
    """Return ``name`` when it is a name ``sanitize_filename`` could have produced, else 400 ``bad_name``."""
    if (not isinstance(name, str) or not DOC_NAME_RE.fullmatch(name) or name.startswith((".", " "))
            or ".." in name or name.endswith((" ", "."))):
        raise APIError(400, "bad_name", "doc_name: a document name as listed by /kb/docs")
    return name


def sanitize_filename(filename: str | None, fallback_ext: str = "") -> str:
    """An uploaded file's name made safe: last path component only, NFC, disallowed runs → "_", no leading
    dots, no "..", at most 128 characters, and never empty (a content-free stand-in name instead)."""
    raw = (filename or "").replace("\x00", "")
    name = re.split(r"[\\/]", raw)[-1]
    name = unicodedata.normalize("NFC", name)
    name = _DOC_BAD.sub("_", name)
    name = re.sub(r"\.{2,}", ".", name).strip(" ._")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stem = stem.strip(" ._")[:100]
    ext = ext.lower()[:10] or fallback_ext
    if not stem:
        stem = "upload-" + hashlib.sha1(raw.encode("utf-8", "replace")).hexdigest()[:8]
    return f"{stem}.{ext}" if ext else stem
