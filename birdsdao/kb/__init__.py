"""Knowledge bases: the "kb" service (embeddings + FAISS + BM25 under <instance>/kb/); see README.md."""
from __future__ import annotations

from .service import KnowledgeBaseService, Limits, build
from .store import Hit

__all__ = ["Hit", "KnowledgeBaseService", "Limits", "build"]
