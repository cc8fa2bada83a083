"""The bundled ``species`` knowledge base, built from the species cards into <instance>/kb/species.

Built once and reused: the manifest records a hash of the cards (plus splitter and model settings); at
start-up a matching hash means nothing to do. A stale KB is updated incrementally (changed cards replaced,
vanished ones deleted; unchanged chunk texts reuse their stored vectors), so a new card costs one card.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

from ..fileio import exclusive_lock

log = logging.getLogger(__name__)

SPECIES_KB = "species"
_BATCH = 200  # documents per committed version while building (progress survives a restart)


def card_documents(catalog) -> list[tuple[str, str]]:
    """(doc_name, markdown) per species card; doc names come safe from ``species.cards.doc_name``."""
    from ..species.cards import iter_card_documents

    return [(name, text) for name, text, _meta in iter_card_documents(catalog) if text]


def source_hash(documents: list[tuple[str, str]], service) -> str:
    digest = hashlib.sha256()
    settings = {"chunk": [service.splitter.chunk_size, service.splitter.overlap], "model": service.embedders.default}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, text in sorted(documents):
        digest.update(name.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def ensure_species_kb(service, documents: list[tuple[str, str]], kb_name: str = SPECIES_KB) -> dict:
    """Create or refresh ``kb_name`` from ``documents``; returns what was done and how long it took."""
    start = time.perf_counter()
    wanted = source_hash(documents, service)
    if service.exists(kb_name):
        if service.get(kb_name).current().manifest.get("source_hash") == wanted:
            return {"action": "reused", "seconds": round(time.perf_counter() - start, 3)}
        action = "updated"
    else:
        service.create(kb_name, "鸟类物种卡片 · bundled species cards", extra={"source_hash": None, "bundled": True})
        action = "built"
    kb = service.get(kb_name)
    existing = kb.current().docs
    changed = [(n, t) for n, t in documents
               if n not in existing or existing[n].get("sha256") != hashlib.sha256(t.encode("utf-8")).hexdigest()]
    for i in range(0, len(changed), _BATCH):
        service.upload(kb_name, [(n, t.encode("utf-8")) for n, t in changed[i:i + _BATCH]], replace=True,
                       bundled=True)
    for name in set(existing) - {n for n, _ in documents}:
        kb.delete_document(name)
    kb.update_manifest(source_hash=wanted)
    seconds = round(time.perf_counter() - start, 3)
    log.info("species knowledge base %s: %d cards (%d embedded) in %.1f s", action, len(documents), len(changed), seconds)
    return {"action": action, "documents": len(documents), "changed": len(changed), "seconds": seconds}


def start_species_kb(service, services, mode: str) -> None:
    """``startup``: build before serving; ``background``: build in a thread (the server answers meanwhile;
    the species KB is 503 ``kb_building`` until ready); ``off``: never."""
    if mode == "off":
        return
    catalog = services.optional("species")
    if catalog is None:
        log.warning("species knowledge base not built: the species service is not loaded")
        return
    try:
        documents = card_documents(catalog)
    except ImportError:
        log.warning("species knowledge base not built: birdsdao.species.cards is not available")
        return

    def run():
        try:
            # gunicorn workers each run this: the first builds, the others wait, then find it up to date.
            with exclusive_lock(service.root / f".{SPECIES_KB}-build.lock"):
                service.status[SPECIES_KB] = ensure_species_kb(service, documents)
        except Exception as exc:  # noqa: BLE001 - a failed build must not take the server down
            log.exception("species knowledge base build failed")
            service.status[SPECIES_KB] = {"action": "failed", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            service.building.discard(SPECIES_KB)

    service.building.add(SPECIES_KB)
    if mode == "background":
        threading.Thread(target=run, name="species-kb", daemon=True).start()
    else:
        run()
