"""The "llm" service: one request → species resolution + retrieval + prompt + backend → an Answer, whole
(``answer()``) or streamed (``stream()``, refusals raised before the first event)."""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field

from ..errors import APIError
from ..kb.species_kb import SPECIES_KB, card_of, card_species
from ..species.names import NameResolver, Resolution
from . import entities as ent
from . import extraction, naming
from . import photo_context
from .base import Limits, Passage, Prompt, has_cjk
from .extraction import Extractor
from .extractive import NOTHING, intents_of, is_comparison
from .prompts import KE_TYPES, PROMPT_TYPES, extraction_from_json, fit
from .registry import Registry

log = logging.getLogger(__name__)

MODES = ("plain", "kb")
# A question that points back at a bird instead of naming one ("它吃什么？", "What about its nest?").
FOLLOW_UP = re.compile(r"它|其(?![他它实中余次])|这种鸟|这只鸟|这鸟|那种鸟|那只鸟|该鸟|这两种|两者|二者|呢\s*[？?]?\s*$|\b(?:it|its|it's|"
                       r"they|them|their|this bird|that bird|these birds|both|the two|what about|how about)\b", re.I)
# ...unless it asks about other birds ("还有其他鸟也吃鱼吗？", "Which birds eat fish?").
OTHER_BIRDS = re.compile(r"其他|别的|另外的|哪些鸟|什么鸟|哪种鸟|哪一种鸟|\b(?:other|another|which) birds?\b", re.I)
# A question this short that asks about something ("寿命呢", "Diet?") continues the conversation too.
SHORT_FOLLOW_UP = 12
# What a species description should cover; the extractive backend scores card sentences against it.
SPECIES_TOPICS = {
    "zh": "中文名 学名 英文名 目 科 保护级别 特征 外形 分布 栖息 食",
    "en": "name scientific english order family iucn status plumage range habitat diet feeds",
}


@dataclass
class AnswerRequest:
    user_input: str
    prompt_type: str = "chat"
    model_type: str | None = None
    mode: str = "plain"
    kb_name: str | None = None
    history: object = None
    species_label: str | None = None
    max_new_tokens: int | None = None
    photo_id: str | None = None  # the photo the question is about (issue #17): its id, record and JPEG
    photo: dict | None = None
    image: bytes | None = None


@dataclass
class Answer:
    response: str
    model_type: str
    prompt_type: str
    mode: str
    generative: bool
    backend_kind: str
    sources: list[Passage] = field(default_factory=list)
    kb_name: str | None = None
    species: dict | None = None
    timings_ms: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stopped: str | None = None  # "timeout" | "cancelled" when generation ended early
    extracted: dict = field(default_factory=dict)  # triples / entities / attributes for KE1-3
    name_resolution: dict | None = None  # how the bird the question names was understood (naming.py)
    photo_id: str | None = None

    def to_dict(self, with_response: bool = True) -> dict:
        out = {"model_type": self.model_type, "prompt_type": self.prompt_type, "mode": self.mode,
               "generative": self.generative, "backend_kind": self.backend_kind,
               "sources": [p.to_source() for p in self.sources], "species": self.species,
               "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
               "name_resolution": self.name_resolution, **self.extracted}
        if with_response:
            out = {"response": self.response, **out}
        if self.kb_name:
            out["kb_name"] = self.kb_name
        if self.warnings:
            out["warnings"] = self.warnings
        if self.stopped:
            out["stopped"] = self.stopped
        if self.photo_id:
            out["photo_id"] = self.photo_id
        return out


class AnswerService:
    def __init__(self, config, services):
        self.catalog = services.optional("species")
        self.kb = services.optional("kb")
        self._services = services
        self.registry = Registry(config, services)
        self.names = NameResolver(self.catalog) if self.catalog is not None else None
        # KE1-3 from a text without an LLM: ``extractor.extract(text, lang)`` (photo chat may call it too).
        self.extractor = Extractor(self.catalog, self.names)
        self.max_input_chars = int(config["LLM_MAX_INPUT_CHARS"])
        self.max_history_turns = int(config["LLM_MAX_HISTORY_TURNS"])
        self.max_history_chars = int(config["LLM_MAX_HISTORY_CHARS"])
        self.max_new_tokens = int(config["LLM_MAX_NEW_TOKENS"])
        self.timeout_s = float(config["LLM_TIMEOUT_S"])
        self.top_k = int(config["LLM_TOP_K"])
        self.default_kb = config["KB_DEFAULT"]
        self.card_docs = card_species(self.catalog) if self.catalog is not None else {}
        self.photo_options = photo_context.options(config)
        self.stats = {"answers": 0, "cancelled": 0, "timeouts": 0}
        self._stats_lock = threading.Lock()

    # --- service protocol -------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"default": self.registry.default,
                "backends": {e.name: (e.error or "loaded") for e in self.registry.entries.values()}}

    @property
    def healthy(self) -> bool:
        """Healthy when the default backend answers (others may be down; /models says which)."""
        entry = self.registry.entries.get(self.registry.default)
        return entry is not None and entry.backend is not None

    def models(self) -> dict:
        return self.registry.to_dict()

    def answer(self, request: AnswerRequest) -> Answer:
        job = self._prepare(request)
        try:
            job.start()
            text = "".join(job.deltas())
            return job.finish(text)
        finally:
            job.close()

    def stream(self, request: AnswerRequest) -> "EventStream":
        return EventStream(self._prepare(request))

    # --- preparing a job --------------------------------------------------------------------------
    def _prepare(self, req: AnswerRequest) -> "Job":
        t0 = time.perf_counter()
        if req.prompt_type not in PROMPT_TYPES:
            raise APIError(400, "bad_field", f"'prompt_type' must be one of: {', '.join(PROMPT_TYPES)}")
        if req.mode not in MODES:
            raise APIError(400, "bad_field", "'mode' must be 'plain' or 'kb'")
        question = (req.user_input or "").strip()
        if not question:
            raise APIError(400, "missing_field", "'user_input' is required")
        if len(question) > self.max_input_chars:
            raise APIError(400, "bad_field", f"'user_input' is longer than {self.max_input_chars} characters")
        history = self._history(req.history)
        entry = self.registry.get(req.model_type)
        backend = entry.backend
        lang = "zh" if has_cjk(question) else "en"
        warnings: list[str] = []
        photo = photo_context.PhotoFacts(req.photo, **self.photo_options) if req.photo is not None else None
        if req.prompt_type == "caption" and photo is None:
            raise APIError(400, "photo_required", "prompt_type=caption needs a 'photo_id' or an 'image'")
        if photo is not None and not req.species_label and photo.species_labels():
            req.species_label = photo.species_labels()[0]  # the photo's bird is the default subject

        focus, label_species, resolution = self._focus_species(req, question, history, warnings)
        unknown_name = resolution is not None and resolution.status in ("suggestions", "missing")
        search_query = question
        if focus and not any(self._names(sp)[0] in question for sp in focus) and resolution is None:
            # A follow-up about the photo or the last turn's bird ("它吃什么？"): search with its names too.
            search_query = f"{question} {' '.join(n for sp in focus[:2] for n in self._names(sp))}"
        subject = [n.lower() for sp in focus for n in self._names(sp)]
        if resolution is not None:
            subject.append(resolution.query.lower())  # "Red-crowned Crane": which bird, not what about it
        prompt = Prompt(question=question, prompt_type=req.prompt_type, lang=lang, history=history,
                        search_query=search_query, subject_terms=subject)
        if req.prompt_type == "species" and not backend.generative:
            prompt.search_query = SPECIES_TOPICS[lang]

        kb_name = None
        if req.mode == "kb":
            kb_name = req.kb_name or self.default_kb
            passages = self._kb_passages(kb_name, search_query, focus, lang)
        else:
            passages = self._card_passages(focus, lang)
            if (not passages and not backend.generative and req.prompt_type == "chat" and self.kb is not None
                    and not unknown_name):
                # No species named and no model to talk freely: the extractive answer needs documents.
                try:
                    passages = self._kb_passages(self.default_kb, search_query, focus, lang)
                except APIError:
                    passages = []
        if req.prompt_type == "chat" and is_comparison(question):
            lookalike = self._lookalike_passage(focus, lang)
            if lookalike is not None:
                passages = [lookalike] + passages
                for i, p in enumerate(passages, start=1):
                    p.number = i
        if req.prompt_type in KE_TYPES:
            passages = []  # KE1-3 extract from the user's text, not from documents
        if photo is not None:
            prompt.image = req.image
            if req.prompt_type not in KE_TYPES:  # what the server saw comes first: the grounding, cited as [1]
                passages = [photo.passage(lang)] + passages
                for i, p in enumerate(passages, start=1):
                    p.number = i
            elif backend.generative:
                prompt.question = photo.description(lang)  # KE over a photo: the text to extract from is what was seen
        prompt.passages = passages
        retrieve_ms = (time.perf_counter() - t0) * 1000

        max_new = min(req.max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        if backend.generative:
            name = self._names(focus[0])[0] if focus else None
            fit(prompt, backend.count_tokens, backend.context_window, max_new, species_name=name)
        ticket = entry.gate.enter()  # 503 + Retry-After right here when the queue is full
        limits = Limits(max_new_tokens=max_new, deadline=time.monotonic() + self.timeout_s)
        return Job(self, entry, prompt, limits, ticket, req, kb_name, focus, warnings, t0=t0,
                   retrieve_ms=retrieve_ms, resolution=resolution, photo=photo)

    def _history(self, raw) -> list[tuple[str, str]]:
        if raw is None or raw == "":
            return []
        if not isinstance(raw, list) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in raw):
            raise APIError(400, "bad_field", "'history' must be a JSON list of [user, assistant] string pairs")
        pairs = [(u, a) for u, a in raw][-self.max_history_turns:] if self.max_history_turns > 0 else []
        while pairs and sum(len(u) + len(a) for u, a in pairs) > self.max_history_chars:
            pairs = pairs[1:]
        return pairs

    def _focus_species(self, req, question, history, warnings, photo_species=None):
        """The species the question is about, in one place: those it names (a group name: its catalogue
        species; a name the catalogue lacks: its genus/family, never a look-alike); else the photo's
        (``species_label`` and ``photo_species``, the species detected in a chat photo); else, for a follow-up
        ("它吃什么？", "What about its nest?"), those the newest user turn named. Returns (focus, the photo's
        first species or None, the Resolution of the name the question, or the turn it refers to, used)."""
        if self.catalog is None:
            if req.prompt_type == "species" or req.species_label or photo_species:
                warnings.append("the species catalogue is unavailable")
            return [], None, None
        photo = []
        if req.species_label:
            sp = self.catalog.by_label(req.species_label) or self.catalog.resolve(req.species_label)
            if sp is None:
                warnings.append(f"unknown species_label '{req.species_label}' ignored")
            else:
                photo.append(sp)
        photo += [sp for sp in photo_species or () if sp is not None and all(sp.id != p.id for p in photo)]
        named, resolution = self._named(question, describe=req.prompt_type == "species")
        earlier = []  # the bird a follow-up points back to: the photo's, else the newest turn's
        if self._is_follow_up(question) and (not named or (len(named) == 1 and is_comparison(question))):
            earlier = photo
            for user, _assistant in reversed(history if not photo else ()):
                earlier, said = self._named(user)
                if earlier:
                    if not named and said is not None and said.status != "exact":
                        resolution = said  # "目录里没有丹顶鹤" holds for the follow-up too
                    break
        if named and earlier:
            # "它和疣鼻天鹅怎么区分？": the bird of the last turn against the one named now.
            named = [sp for sp in earlier[:1] if sp.id != named[0].id] + named
        elif earlier:
            named = earlier
        limit = naming.MAX_CARDS if resolution is not None and resolution.status in ("group", "suggestions",
                                                                                        "missing") else 2
        focus = named[:limit] or photo[:2]
        return focus, (photo[0] if photo else None), resolution

    def _named(self, text, describe=False):
        """(species ``text`` names, the Resolution of the first name it used)."""
        mentions = self.catalog.find_mentions(text)
        named = []
        for sp, _start, _end in mentions:
            if all(sp.id != s.id for s in named):
                named.append(sp)
        resolution = None
        found = naming.names_in(self.names, text)
        if not found and not named and describe:
            found = [self.names.resolve(text)]
        if found:
            resolution = found[0]
            # Species the text names exactly keep their place; the name's own species follow.
            named = named + [sp for sp in naming.focus_of(resolution) if sp not in named]
        elif named:
            sp, start, end = mentions[0]
            resolution = Resolution(text[start:end], "exact", species=sp, confidence=1.0)
        return named, resolution

    @staticmethod
    def _is_follow_up(question: str) -> bool:
        if OTHER_BIRDS.search(question):
            return False
        return bool(FOLLOW_UP.search(question)) or (len(question) <= SHORT_FOLLOW_UP and bool(intents_of(question)))

    def _lookalike_passage(self, focus, lang) -> Passage | None:
        """How to tell the first two birds of a comparison apart (lookalikes.csv), as a source to quote."""
        if len(focus) < 2:
            return None
        line = self.catalog.how_to_tell(focus[0].id, focus[1].id)
        if not line or not line.get(lang):
            return None
        pair = "|".join(x for x in (line["species_a"], line["species_b"]) if x)
        title = " / ".join(ent.display_name(sp, lang) for sp in focus[:2])
        return Passage(number=0, text=line[lang], kb_name=SPECIES_KB, doc_name="lookalikes.csv",
                       chunk_id=f"lookalikes.csv#{pair}", score=1.0, heading=title, score_kind="lookalike")

    @staticmethod
    def _names(sp) -> list[str]:
        return [n for n in (sp.chinese_name, sp.english_name, sp.scientific_name) if n]

    def _card_passages(self, focus, lang) -> list[Passage]:
        passages = []
        for sp in focus:
            passage = self._card_passage(sp, len(passages) + 1, lang)
            if passage:
                passages.append(passage)
        return passages

    def _card_passage(self, sp, number, lang) -> Passage | None:
        card = card_of(self.catalog, sp, lang)
        if card is None:
            return None
        name, text = card
        if lang != "zh":
            # Many English cards carry no English description: the Chinese card's sentences are quoted when
            # the English ones do not answer ("What about its nest?").
            zh = card_of(self.catalog, sp, "zh")
            if zh and zh[1] not in text:
                text = f"{text.rstrip()}\n\n{zh[1]}"
        return Passage(number=number, text=text, kb_name=SPECIES_KB, doc_name=name, chunk_id=f"{name}#card",
                       score=1.0, heading=ent.display_name(sp, lang), species_id=sp.id, score_kind="card")

    def _kb_passages(self, kb_name, query, focus, lang) -> list[Passage]:
        is_species_kb = kb_name == SPECIES_KB and self.catalog is not None
        if self.kb is None:
            if is_species_kb:
                return self._card_passages(focus, lang)  # the bundled species KB, straight from its cards
            self._services.get("kb")  # raises 503 model_unavailable with the reason
        try:
            hits = self.kb.search(kb_name, query, self.top_k)
        except APIError as exc:
            if is_species_kb and exc.status in (404, 503):
                # not built, or still building (503 kb_building): the cards are its whole content
                return self._card_passages(focus, lang)
            raise
        passages = []
        for hit in hits:
            sp = self.card_docs.get(hit.doc_name) if is_species_kb else None
            passages.append(Passage(number=0, text=hit.text, kb_name=hit.kb_name, doc_name=hit.doc_name,
                                    chunk_id=hit.chunk_id, score=hit.score, heading=hit.heading or None,
                                    species_id=sp.id if sp else None, score_kind=getattr(hit, "score_kind", None) or None))
        if is_species_kb and focus:
            # A question about a named bird: other birds' cards are off-subject (their sentences would answer
            # for the wrong species).
            ids = {sp.id for sp in focus}
            passages = [p for p in passages if p.species_id in ids]
        if is_species_kb:
            # The photo's / named species (both of a comparison) must be in the sources even when the words
            # missed their cards.
            for sp in reversed(focus[:2]):
                if all(p.species_id != sp.id for p in passages):
                    card = self._card_passage(sp, 0, lang)
                    if card:
                        passages.insert(0, card)
        passages = passages[: max(self.top_k, 1)]
        for i, p in enumerate(passages, start=1):
            p.number = i
        return passages

    def count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1


class Job:
    """One answer in progress: owns its place in the backend's queue and its cancel flag."""

    def __init__(self, service: AnswerService, entry, prompt: Prompt, limits: Limits, ticket, req, kb_name, focus,
                 warnings, *, t0: float, retrieve_ms: float, resolution: Resolution | None = None, photo=None):
        """t0: when the request started (perf_counter); retrieve_ms: time spent finding its passages;
        resolution: how the question's bird name was understood (naming.py)."""
        self.service = service
        self.entry = entry
        self.backend = entry.backend
        self.prompt = prompt
        self.limits = limits
        self.ticket = ticket
        self.req = req
        self.kb_name = kb_name
        self.focus = focus
        self.warnings = warnings
        self.timings_ms: dict = {"retrieve": retrieve_ms}
        self.t0 = t0
        self.finished = False
        self._stream = None
        self.extracted: dict | None = None
        self.resolution = resolution
        self.photo = photo  # photo_context.PhotoFacts of the photo the question is about, or None

    def start(self) -> None:
        remaining = self.limits.deadline - time.monotonic()
        self.ticket.acquire(timeout=max(remaining, 0.0))
        self.t_start = time.perf_counter()
        self.timings_ms["queue"] = (self.t_start - self.t0) * 1000 - self.timings_ms["retrieve"]

    def deltas(self):
        """Text deltas of the answer."""
        if self.photo is not None and not self.backend.generative:
            direct = self._photo_answer()
            if direct is not None:
                yield direct
                return
        if not self.backend.generative and self.prompt.prompt_type in KE_TYPES:
            yield self._extract_without_llm()
            return
        preface = naming.preface(self.resolution, self.prompt.lang) if self.resolution else ""
        if preface:
            yield preface
        elif not self.backend.generative and self.focus and self.prompt.passages:
            yield self._subject_line()
        self._stream = self.backend.stream(self.prompt, self.limits)
        first = True
        for delta in self._stream:
            if first:
                self.timings_ms["first_token"] = (time.perf_counter() - self.t0) * 1000
                first = False
            yield delta

    def _photo_answer(self) -> str | None:
        """The retrieval-only answer built from the photo's facts: caption, KE1-3 over what was seen, or a
        count/position/place/date/camera/species/sex question answered directly; None: answer as usual."""
        kind, lang = self.prompt.prompt_type, self.prompt.lang
        if kind == "caption":
            return self.photo.caption()
        if kind in KE_TYPES:
            text, self.extracted = self.photo.extract(kind, lang)
            return text
        if kind != "chat":
            return None  # a species description of the photo's bird is the cards' job
        cards = [p for p in self.prompt.passages if p.kb_name != photo_context.PHOTO_KB]
        direct = self.photo.direct_answer(self.prompt.question, lang, cards)
        if direct is None:  # a question for the cards: quoting the photo's description would not answer it
            for i, p in enumerate(cards, start=1):
                p.number = i
            self.prompt.passages = cards
        return direct

    def _subject_line(self) -> str:
        sp = self.focus[0]
        lang = self.prompt.lang
        if len(self.focus) >= 2 and is_comparison(self.prompt.question):
            a, b = (ent.display_name(x, lang) for x in self.focus[:2])
            return f"{a}与{b}的区别：" if lang == "zh" else f"{a} vs {b}: "
        if lang == "zh":
            taxon = "·".join(x for x in (sp.order_zh, sp.family_zh or sp.family) if x)
            return f"关于{ent.display_name(sp, 'zh')}（{taxon or sp.scientific_name}）：" if taxon or sp.chinese_name else ""
        return f"About the {sp.english_name} ({', '.join(x for x in (sp.scientific_name, sp.family) if x)}): "

    def _extract_without_llm(self) -> str:
        """KE1-3 from the text itself (``extraction.py``); card facts about the birds it names only under the
        separate, labelled ``from_cards``."""
        lang, kind = self.prompt.lang, self.prompt.prompt_type
        text = self.prompt.question
        self.extracted = extraction.ke_result(kind, self.service.extractor.extract(text, lang), text,
                                              self.service.catalog, lang, also=self.focus)
        return extraction.ke_text(kind, self.extracted, lang)

    def finish(self, text: str) -> Answer:
        self.finished = True
        now = time.perf_counter()
        self.timings_ms["generate"] = (now - getattr(self, "t_start", now)) * 1000
        self.timings_ms["total"] = (now - self.t0) * 1000
        extracted = self.extracted
        if extracted is None and self.prompt.prompt_type in KE_TYPES:
            extracted = self._parse_model_json(text)
        answer = Answer(
            response=text or NOTHING[self.prompt.lang], model_type=self.entry.name,
            prompt_type=self.prompt.prompt_type, mode=self.req.mode, generative=self.backend.generative,
            backend_kind=self.backend.kind, sources=self.prompt.passages, kb_name=self.kb_name,
            species=self._species(), timings_ms=self.timings_ms, warnings=self.warnings,
            extracted=extracted or {},
            name_resolution=self.resolution.to_dict() if self.resolution else None, photo_id=self.req.photo_id)
        if self.limits.cancel.is_set():
            answer.stopped = "cancelled"
        elif self.limits.expired():
            answer.stopped = "timeout"
            self.service.count("timeouts")
        self.service.count("answers")
        return answer

    def _species(self) -> dict | None:
        """The one species the answer is about; none for a group or a name the catalogue lacks (its cards are
        other birds)."""
        if self.resolution is not None and self.resolution.status not in ("exact", "fuzzy"):
            return None
        return self.focus[0].names() if self.focus else None

    def _parse_model_json(self, text: str) -> dict:
        extracted, warnings = extraction_from_json(self.prompt.prompt_type, text, self.prompt.question)
        self.warnings.extend(warnings)
        return extracted

    def close(self) -> None:
        """Stop generating (client gone, or done) and give the model to the next request. Idempotent."""
        if not self.finished:
            self.limits.cancel.set()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self.ticket is not None:
            if not self.finished and self.ticket.state == "running":
                self.service.count("cancelled")
            self.ticket.release()
            self.ticket = None


class EventStream:
    """Iterator of answer events; ``close()`` (Werkzeug calls it when the client goes away) cancels the
    generation and frees the model even when iteration never started."""

    def __init__(self, job: Job):
        self.job = job
        self._events = self._run()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._events)

    def _run(self):
        job = self.job
        try:
            job.start()
            parts = []
            for delta in job.deltas():
                parts.append(delta)
                yield {"delta": delta}
            answer = job.finish("".join(parts))
            yield {"done": True, **answer.to_dict(with_response=False)}
        except APIError as exc:
            yield {"done": True, "error": exc.message, "code": exc.code, "sources": []}
        except Exception:  # headers are sent: the error can only travel as the last event
            log.exception("answer stream failed")
            yield {"done": True, "error": "internal error while generating", "code": "internal_error", "sources": []}
        finally:
            job.close()

    def close(self) -> None:
        self._events.close()
        self.job.close()
