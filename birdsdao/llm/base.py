"""The interface every answer backend implements and what they share: the prompt, per-call limits, cooperative
cancellation and the one-generation-at-a-time gate with a bounded queue."""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from ..config import DEFAULTS
from ..errors import APIError
from ..species.catalog import _CJK as CJK, has_cjk  # noqa: F401 - has_cjk is re-exported for the backends


@dataclass
class Passage:
    """One retrieved text the answer may cite as ``[number]`` (a KB hit or a species card)."""

    number: int
    text: str
    kb_name: str
    doc_name: str
    chunk_id: str
    score: float
    heading: str | None = None
    species_id: str | None = None
    score_kind: str | None = None  # the KB hit's (Hit.score_kind); "card": a species card picked by name, unscored

    def to_source(self) -> dict:
        out = {"kb_name": self.kb_name, "doc_name": self.doc_name, "chunk_id": self.chunk_id,
               "score": round(float(self.score), 4), "text": self.text, "n": self.number}
        if self.heading:
            out["heading"] = self.heading
        if self.species_id:
            out["species_id"] = self.species_id
        if self.score_kind:
            out["score_kind"] = self.score_kind
        return out


@dataclass
class Prompt:
    """What a backend answers. Generative backends read ``messages`` (system/user/assistant dicts, already
    fitted to their context window); the extractive backend reads the structured parts."""

    question: str
    prompt_type: str = "chat"
    lang: str = "zh"
    passages: list[Passage] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    # The question with the photo's species names added (for retrieval/sentence scoring, never shown).
    search_query: str = ""
    # Names of the species the question is about: matching them alone does not make a sentence an answer.
    subject_terms: list[str] = field(default_factory=list)
    # The photo the question is about (JPEG bytes, already size-bounded), for vision-capable backends; the
    # text description of what the server saw in it goes into ``messages`` / ``passages`` as usual.
    image: bytes | None = None


@dataclass
class Limits:
    max_new_tokens: int = 512
    deadline: float | None = None  # time.monotonic() value after which generation stops
    cancel: threading.Event = field(default_factory=threading.Event)

    def expired(self) -> bool:
        return self.cancel.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)


class Backend:
    """An answer backend. Subclasses set the class attributes and implement ``stream``."""

    kind: str = "generative"     # "generative" | "retrieval-only"
    generative: bool = True
    local: bool = True           # local models answer one request at a time (see Gate)
    vision: bool = False         # reads Prompt.image; a text-only backend ignores it (the description is in the text)

    def __init__(self, name: str, context_window: int = 4096):
        self.name = name
        self.context_window = context_window

    # --- the interface -------------------------------------------------------------------------
    def stream(self, prompt: Prompt, limits: Limits) -> Iterator[str]:
        """Yield text deltas. Must stop soon after ``limits.expired()`` turns true, and must stop when the
        generator is closed (the client went away)."""
        raise NotImplementedError

    def generate(self, prompt: Prompt, limits: Limits) -> str:
        out = []
        stream = self.stream(prompt, limits)
        try:
            for delta in stream:
                out.append(delta)
        finally:
            stream.close()
        return "".join(out)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for this model; backends with a tokenizer override this estimate."""
        return estimate_tokens(text)

    def describe(self) -> dict:
        return {}


_WORD = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9\u3400-\u9fff\uf900-\ufaff]")


def estimate_tokens(text: str) -> int:
    """A conservative token estimate for models whose tokenizer we cannot call (remote APIs): one per CJK
    character, ~1.3 per Latin word, one per punctuation mark."""
    cjk = len(CJK.findall(text))
    words = _WORD.findall(text)
    latin = sum(1 for w in words if w[0].isalnum())
    return cjk + int(latin * 1.3 + 0.999) + (len(words) - latin)



class Gate:
    """One generation at a time per local backend, with a bounded queue of waiters. ``enter()`` refuses at
    once (503 + Retry-After) when the queue is full, so a worker never hangs behind a busy model; a
    waiter gives up with 503 when its wait would outlast the request's timeout."""

    def __init__(self, name: str, concurrency: int = 1, queue_size: int = DEFAULTS["LLM_QUEUE_SIZE"],
                 retry_after_s: int = DEFAULTS["LLM_RETRY_AFTER_S"]):
        self.name = name
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0

    def _busy(self, why: str) -> APIError:
        return APIError(503, "model_busy", f"model '{self.name}' is busy ({why}); retry later",
                        headers={"Retry-After": str(self.retry_after_s)})

    def enter(self) -> "Ticket":
        with self._lock:
            if self.waiting + self.running >= self.concurrency + self.queue_size:
                raise self._busy(f"{self.running} running, {self.waiting} queued")
            self.waiting += 1
        return Ticket(self)


class Ticket:
    """A place in a Gate's queue: ``acquire`` waits for the model, ``release`` frees it (idempotent)."""

    def __init__(self, gate: Gate):
        self.gate = gate
        self.state = "queued"   # queued -> running -> done

    def acquire(self, timeout: float | None) -> None:
        got = self.gate._slots.acquire(timeout=timeout if timeout is None or timeout > 0 else 0)
        with self.gate._lock:
            self.gate.waiting -= 1
            if got:
                self.gate.running += 1
                self.state = "running"
            else:
                self.state = "done"
        if not got:
            raise self.gate._busy("timed out waiting for the model")

    def release(self) -> None:
        with self.gate._lock:
            if self.state == "queued":
                self.gate.waiting -= 1
            elif self.state == "running":
                self.gate.running -= 1
                self.gate._slots.release()
            self.state = "done"
