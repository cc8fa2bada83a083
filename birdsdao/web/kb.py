"""Knowledge-base routes /kb/* (shared/API.md). Thin: parse → one "kb" service call → JSON. The HTML page
GET /kb lives in pages.py. Names are validated by the service (birdsdao/kb/names.py) before any file access."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ..errors import APIError
from ..kb.names import validate_doc_name, validate_kb_name
from ..kb.species_kb import SPECIES_KB
from ..security import require_token
from ..services import get_service
from .wsgi import client_gone
from .forms import bool_field, files_field, int_field, read_upload, text_field

bp = Blueprint("kb", __name__, url_prefix="/kb")


def _kb_name() -> str:
    # Validated here too so a bad name is 400 even when the service is unavailable (503).
    return validate_kb_name(text_field("kb_name", required=True, max_len=256))


@bp.get("/list")
def list_kbs():
    # ``bundled``: the species KB this server builds from its cards (deleting it needs ``confirm``).
    return {"kbs": [dict(kb, bundled=kb.get("kb_name") == SPECIES_KB) for kb in get_service("kb").list()]}


@bp.post("/create")
@require_token
def create():
    name = _kb_name()
    info = get_service("kb").create(name, text_field("description", default="", max_len=1000),
                                    text_field("embed_model", max_len=512))
    return jsonify(info), 201


@bp.post("/delete")
@require_token
def delete():
    name = _kb_name()
    # The bundled species KB is one click from gone and hours to rebuild: the request must repeat its name.
    if name == SPECIES_KB and text_field("confirm", default="", max_len=256) != name:
        raise APIError(409, "confirm_required",
                       f"“{name}” is the bundled species knowledge base; to delete it, send confirm={name}")
    get_service("kb").delete(name)
    return {"kb_name": name, "deleted": True}


@bp.post("/upload")
@require_token
def upload():
    name = _kb_name()
    service = get_service("kb")
    replace = bool_field("replace", False)
    files = files_field("files", max_count=service.limits.max_files)
    uploads = [(f.filename, read_upload(f)) for f in files]
    if bool_field("async", False):
        job = service.upload_job(name, uploads, replace)
        return jsonify({"kb_name": name, "job_id": job["job_id"], "state": job["state"]}), 202
    return {"kb_name": name, "files": service.upload(name, uploads, replace, progress=_stop_if_client_gone())}


def _stop_if_client_gone():
    """A progress check that abandons the upload (nothing is written) once its client has hung up."""
    gone = client_gone(request.environ)

    def check(done: int, total: int) -> None:
        if gone():
            current_app.logger.info("upload to %s cancelled after %d of %d chunks: the client went away",
                                    request.path, done, total)
            raise APIError(499, "client_gone", "the client went away; the upload was cancelled")

    return check


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    return get_service("kb").jobs.get(job_id)


@bp.get("/docs")
def docs():
    return {"docs": get_service("kb").docs(_kb_name())}


@bp.post("/delete_doc")
@require_token
def delete_doc():
    name = _kb_name()
    doc_name = validate_doc_name(text_field("doc_name", required=True, max_len=256))
    get_service("kb").delete_doc(name, doc_name)
    return {"kb_name": name, "doc_name": doc_name, "deleted": True}


@bp.post("/search")
def search():
    name = _kb_name()
    query = text_field("query", required=True, max_len=2000)
    hits = get_service("kb").search(name, query, int_field("top_k", 5, lo=1, hi=50))
    return {"kb_name": name, "hits": [hit.to_dict() for hit in hits]}
