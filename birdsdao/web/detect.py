"""POST /detect: a photo in, every bird boxed and named out (contract in shared/API.md)."""
from flask import Blueprint

from ..services import get_service
from .forms import bool_field, int_field, upload_bytes

bp = Blueprint("detect", __name__)


@bp.post("/detect")
def detect():
    data = upload_bytes("image")
    top_k = int_field("top_k", 5, lo=1, hi=20)
    annotate = bool_field("annotate", True)
    return get_service("vision").detect(data, top_k=top_k, annotate_image=annotate).to_dict()
