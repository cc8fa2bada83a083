"""Chinese word segmentation in one place: jieba, loaded once per process (its dictionary takes about a
second to build) and quiet. Retrieval (kb/search.py), the extractive answerer (llm/extractive.py) and
``train score`` all cut text through here, so they agree on what a word is."""
from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_jieba = None


def jieba():
    """The initialised jieba module (thread-safe; the first call loads the dictionary)."""
    global _jieba
    if _jieba is None:
        with _lock:
            if _jieba is None:
                import jieba as module

                module.setLogLevel(logging.WARNING)
                module.initialize()
                _jieba = module
    return _jieba


def search_words(text: str) -> list[str]:
    """Search-mode cut: long words and their sub-words (both "白头海雕" and "海雕"), for matching queries."""
    return jieba().lcut_for_search(text)


def words(text: str) -> list[str]:
    """Plain cut: each character in exactly one word, for scoring texts against each other."""
    return jieba().lcut(text)
