"""POST /detect: a photo in, every bird boxed and named out (contract in shared/API.md)."""
from flask import Blueprint, Response

from ..errors import APIError
from ..vision.location import Location, check_position, region_location
from .forms import bool_field, int_field, raw_field, text_field, upload_bytes
from .metrics import observe_stages
from .photos import detect_and_keep, stored_photo

bp = Blueprint("detect", __name__)


@bp.post("/detect")
def detect():
    data = upload_bytes("image")
    top_k = int_field("top_k", 5, lo=1, hi=20)
    annotate = bool_field("annotate", True)
    location = _location_fields()
    result, kept, warning = detect_and_keep(data, top_k=top_k, annotate_image=annotate, location=location)
    observe_stages(result.timings_ms)
    out = {**result.to_dict(), "photo_id": kept.photo_id}  # follow-up questions send it to /get_response
    if warning:
        out["warnings"] = [warning]
    return out


@bp.get("/photos/<photo_id>")
def photo(photo_id: str):
    """The kept JPEG of a photo (the page shows it as the user's message); 400/404/410 as /get_response."""
    kept = stored_photo(photo_id)
    return Response(kept.jpeg, mimetype="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})


def _location_fields() -> Location | None:
    """Optional ``lat`` + ``lon`` (both or neither) and ``region`` (an allowlisted name); every field given
    is checked even when another wins, so a bad one is a 400 and never silently dropped."""
    lat, lon = raw_field("lat"), raw_field("lon")
    region = text_field("region", max_len=64)
    if (lat is None) != (lon is None):
        missing = "lon" if lon is None else "lat"
        raise APIError(400, "bad_field", f"'lat' and 'lon' go together: '{missing}' is missing")
    named = region_location(region, "region") if region is not None else None
    if lat is not None:
        return Location(*check_position(lat, lon), "form")
    return named
