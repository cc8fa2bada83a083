"""POST /species/teach and /species/forget: the user adds or improves a species from their own photos,
or removes one they taught (writes: token-guarded)."""
from flask import Blueprint

from ..security import require_token
from ..services import get_service
from .forms import files_field, read_upload, text_field

bp = Blueprint("species", __name__, url_prefix="/species")


@bp.post("/teach")
@require_token
def teach():
    label = text_field("label", required=True, max_len=200)
    names = {k: text_field(k, max_len=200) for k in ("english_name", "chinese_name", "scientific_name")}
    images = [read_upload(f) for f in files_field("images", max_count=50, missing_code="no_image")]
    return get_service("vision").teach(label, names, images)


@bp.post("/forget")
@require_token
def forget():
    return get_service("vision").forget(text_field("label", required=True, max_len=200))


@bp.get("/taught")
def taught():
    return {"species": get_service("vision").taught()}
