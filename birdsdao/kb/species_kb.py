"""The bundled species knowledge base, in one place: its name, its documents (the species cards), the map from a
card document back to its species, the card fallback while it is not built, and its build (see README.md)."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Iterator

from ..species.cards import doc_name, render_card

log = logging.getLogger(__name__)

SPECIES_KB = "species"
_BATCH = 200  # documents per committed version while building (progress survives a restart)


def iter_card_documents(catalog) -> Iterator[tuple[str, str, dict]]:
    """(doc_name, Markdown text, metadata) for every species: the input of this KB."""
    seen: set[str] = set()
    for species in catalog.all():
        record = catalog.record(species.id)
        name = doc_name(record)
        if name in seen:  # labels are unique, but keep the guarantee local
            raise ValueError(f"two species map to document {name}")
        seen.add(name)
        metadata = {
            "kb": SPECIES_KB, "doc_name": name, "species_id": species.id, "label": species.label,
            "scientific_name": species.scientific_name, "english_name": species.english_name,
            "chinese_name": species.chinese_name,
            "description_kind": (record.get("description") or {}).get("kind"),
        }
        yield name, render_card(record, "zh"), metadata


def card_documents(catalog) -> list[tuple[str, str]]:
    """(doc_name, markdown) per species card that has text."""
    return [(name, text) for name, text, _meta in iter_card_documents(catalog) if text]


def card_species(catalog) -> dict:
    """Card document name (``BALD_EAGLE.md``) → species, so a hit in this KB knows its species."""
    return {doc_name(catalog.record(sp.id)): sp for sp in catalog.all()}


def card_of(catalog, species, lang: str) -> tuple[str, str] | None:
    """(doc_name, card text) of one species: what this KB holds on it, read straight from the cards."""
    text = catalog.card_text(species.id, lang)
    return (doc_name(catalog.record(species.id)), text) if text else None


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
    documents = card_documents(catalog)

    def run():
        try:
            # Every gunicorn worker (of every app server, on PostgreSQL) runs this: the first builds, the others
            # wait for its lock, then find it up to date.
            with service.build_lock(SPECIES_KB):
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
