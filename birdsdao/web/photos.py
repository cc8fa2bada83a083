"""The conversation's photos for the views: one store per app (built on first use from the config), and
"detect this upload and keep it" shared by /detect and /get_response (which may be sent the image itself)."""
from __future__ import annotations

import logging

from flask import current_app

from ..errors import APIError
from ..services import get_service
from ..vision.photos import PhotoStore, StoredPhoto, build_photo_store, prepare

log = logging.getLogger(__name__)


def photo_store() -> PhotoStore:
    store = current_app.extensions.get("birdsdao.photos")
    if store is None:
        store = current_app.extensions["birdsdao.photos"] = build_photo_store(current_app.config)
    return store


def detect_and_keep(data: bytes, *, with_jpeg: bool = False, **options):
    """(/detect's result, the kept photo (id None when it could not be stored), a warning or None). A store
    that cannot write (disk full or read-only, photo too large) leaves the id None and says so: the detection
    itself, and an answer about the photo, still go ahead. The photo is written after the response unless the
    caller needs its JPEG now (``with_jpeg``: an answer that sends it to a vision-capable backend)."""
    result = get_service("vision").detect(data, keep_image=True, **options)
    make_jpeg, record = prepare(result, current_app.config)
    jpeg = make_jpeg() if with_jpeg else None
    try:
        if jpeg is not None:
            photo_id = photo_store().put(jpeg, record)
        else:
            photo_id = photo_store().put_later(make_jpeg, record)
        warning = None
    except APIError as exc:
        photo_id, warning = None, f"the photo was not kept for the conversation: {exc.message}"
    except OSError as exc:
        log.warning("photo not kept: %r", exc)
        photo_id, warning = None, "the photo was not kept for the conversation (storage error)"
    return result, StoredPhoto(photo_id, jpeg, record), warning


def stored_photo(photo_id: str) -> StoredPhoto:
    return photo_store().get(photo_id)
