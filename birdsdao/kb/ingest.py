"""Uploaded files → chunks: loaders per format (txt, md, pdf, docx, html, csv, jsonl; UTF-8 or GB18030),
a Chinese-aware sentence splitter with overlap, and Q&A detection ("question-to-question": the question is
what gets indexed, the answer what gets returned). Nothing here touches the file system."""
from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass, field

from langchain_text_splitters import RecursiveCharacterTextSplitter

SUPPORTED = ("txt", "md", "pdf", "docx", "html", "htm", "csv", "jsonl")


class IngestError(ValueError):
    """A file we refuse or cannot read; the message is shown to the user for that file."""


@dataclass
class Section:
    """A run of text under one heading (or one Q&A pair when ``question`` is set)."""

    text: str
    heading: str = ""
    question: str | None = None


@dataclass
class Chunk:
    doc_name: str
    position: int
    text: str                       # what a search returns (for Q&A: question and answer)
    heading: str = ""
    index_text: str = ""            # what is embedded and BM25-indexed (for Q&A: the question only)
    extra: dict = field(default_factory=dict)


# --- decoding --------------------------------------------------------------------------------------------

def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM), then GB18030 (a superset of GBK/GB2312), then a detector's best guess."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding == "gb18030" and _looks_binary(text):
            break
        return text
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise IngestError("not a text file (unknown encoding)")
    return str(best)


def _looks_binary(text: str) -> bool:
    sample = text[:4000]
    return bool(sample) and sum(ch < " " and ch not in "\r\n\t\f" for ch in sample) / len(sample) > 0.05


# --- loaders: bytes → sections -----------------------------------------------------------------------------

_HEADING_MD = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_QA_LINE = re.compile(r"^\s*(?:\*\*)?(Q|A|问|答|问题|答案|Question|Answer)(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.*)$", re.I)


def _qa_kind(tag: str) -> str:
    return "q" if tag.lower() in ("q", "问", "问题", "question") else "a"


def _sections_from_lines(text: str, *, markdown: bool) -> list[Section]:
    """Headings (Markdown ``#``) open sections; ``Q:``/``A:`` (or 问：/答：) lines become Q&A sections."""
    sections: list[Section] = []
    heading, buf = "", []
    path: list[tuple[int, str]] = []  # open headings (level, text): a section's heading is its path
    question: list[str] | None = None
    answer: list[str] = []

    def flush_text():
        body = "\n".join(buf).strip()
        if body:
            sections.append(Section(body, heading))
        buf.clear()

    def flush_qa():
        nonlocal question
        if question is not None:
            q, a = " ".join(question).strip(), "\n".join(answer).strip()
            if q and a:
                sections.append(_qa_section(q, a, heading))
        question = None
        answer.clear()

    mode = "text"
    for line in text.splitlines():
        m = _HEADING_MD.match(line) if markdown else None
        if m:
            flush_qa() if mode != "text" else flush_text()
            level = len(m.group(1))
            path = [(lv, h) for lv, h in path if lv < level] + [(level, m.group(2).strip())]
            mode, heading = "text", " > ".join(h for _, h in path)
            continue
        qa = _QA_LINE.match(line)
        if qa and _qa_kind(qa.group(1)) == "q":
            flush_qa() if mode != "text" else flush_text()
            mode, question = "q", [qa.group(2)]
            continue
        if qa and mode == "q":
            mode = "a"
            answer.append(qa.group(2))
            continue
        if mode == "q":
            question.append(line)
        elif mode == "a":
            answer.append(line)
        else:
            buf.append(line)
    flush_qa() if mode != "text" else flush_text()
    return sections


def _qa_section(question: str, answer: str, heading: str) -> Section:
    """A Q&A pair as one section, labelled in the question's language; the question is also indexed alone."""
    text = f"问：{question}\n答：{answer}" if _has_cjk(question) else f"Q: {question}\nA: {answer}"
    return Section(text, heading, question)


def _has_cjk(text: str) -> bool:
    return re.search(r"[\u4e00-\u9fff]", text) is not None


def load_txt(data: bytes, limits) -> list[Section]:
    return _sections_from_lines(decode_text(data), markdown=False)


def load_md(data: bytes, limits) -> list[Section]:
    return _sections_from_lines(decode_text(data), markdown=True)


def load_pdf(data: bytes, limits) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if len(reader.pages) > limits.max_pdf_pages:
            raise IngestError(f"PDF has more than {limits.max_pdf_pages} pages")
        return [Section(text, f"p. {number}") for number, page in enumerate(reader.pages, 1)
                if (text := (page.extract_text() or "").strip())]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, IngestError):
            raise
        raise IngestError(f"unreadable PDF ({type(exc).__name__})") from None


def check_zip(data: bytes, limits) -> None:
    """Refuse zip bombs before python-docx inflates anything: entry count, total size and ratio."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        raise IngestError("not a valid .docx (zip) file") from None
    if len(infos) > limits.max_zip_entries:
        raise IngestError("docx has too many parts")
    total = sum(info.file_size for info in infos)
    if total > limits.max_unzipped_bytes or total > limits.max_zip_ratio * max(len(data), 1):
        raise IngestError("docx expands too much (zip bomb refused)")


def load_docx(data: bytes, limits) -> list[Section]:
    check_zip(data, limits)
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError) as exc:
        raise IngestError(f"unreadable .docx ({type(exc).__name__})") from None
    lines = []
    for paragraph in document.paragraphs:
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        text = paragraph.text.strip()
        if not text:
            continue
        level = re.match(r"(?:Heading|标题)\s*(\d)", style)
        if level:
            lines.append(f"{'#' * int(level.group(1))} {text}")
        elif style == "Title":
            lines.append(f"# {text}")
        else:
            lines.append(text)
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    return _sections_from_lines("\n".join(lines), markdown=True)


def load_html(data: bytes, limits) -> list[Section]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode_text(data), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "iframe"]):
        tag.decompose()
    lines = []
    for element in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "td", "th", "pre", "blockquote", "dt", "dd"]):
        if element.find(["p", "li", "td", "pre", "blockquote"]):
            continue  # a container: its inner blocks are visited themselves
        text = " ".join(element.get_text(" ", strip=True).split())
        if text:
            lines.append(f"{'#' * int(element.name[1])} {text}" if element.name[0] == "h" and element.name[1:].isdigit() else text)
    if not lines:  # plain text in a bare <body>
        lines = [soup.get_text("\n", strip=True)]
    return _sections_from_lines("\n".join(lines), markdown=True)


_Q_KEYS = ("question", "q", "问题", "问")
_A_KEYS = ("answer", "a", "答案", "答")
_T_KEYS = ("text", "content", "page_content", "body", "正文", "内容")


def _record_section(record: dict) -> Section | None:
    lowered = {str(k).strip().lower(): v for k, v in record.items() if v not in (None, "")}
    q = next((str(lowered[k]) for k in _Q_KEYS if k in lowered), None)
    a = next((str(lowered[k]) for k in _A_KEYS if k in lowered), None)
    heading = str(lowered.get("title") or lowered.get("heading") or lowered.get("标题") or "")
    if q and a:
        return _qa_section(q, a, heading)
    t = next((str(lowered[k]) for k in _T_KEYS if k in lowered), None)
    if t is None:
        t = "; ".join(f"{k}: {v}" for k, v in record.items() if v not in (None, ""))
    return Section(t, heading) if t.strip() else None


def load_csv(data: bytes, limits) -> list[Section]:
    text = decode_text(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = csv.DictReader(io.StringIO(text), dialect=dialect)
    try:
        return [s for row in rows if (s := _record_section({k: v for k, v in row.items() if k is not None}))]
    except csv.Error as exc:
        raise IngestError(f"bad CSV: {exc}") from None


def load_jsonl(data: bytes, limits) -> list[Section]:
    sections = []
    for number, line in enumerate(decode_text(data).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise IngestError(f"line {number} is not JSON") from None
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict):
            raise IngestError(f"line {number} is not a JSON object")
        if (section := _record_section(record)) is not None:
            sections.append(section)
    return sections


LOADERS = {"txt": load_txt, "md": load_md, "pdf": load_pdf, "docx": load_docx, "html": load_html,
           "htm": load_html, "csv": load_csv, "jsonl": load_jsonl}


def load_sections(doc_name: str, data: bytes, limits) -> list[Section]:
    ext = doc_name.rpartition(".")[2].lower() if "." in doc_name else ""
    loader = LOADERS.get(ext)
    if loader is None:
        raise IngestError(f"unsupported file type '.{ext}'; supported: {', '.join(SUPPORTED)}")
    return loader(data, limits)


# --- splitting -------------------------------------------------------------------------------------------

# A sentence ends after 。！？；!?; (plus closing quotes/brackets), after ". " or at a line break.
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;…])[”’」』）)\"']*|(?<=\.)\s+|\n+")


class ChineseSentenceSplitter:
    """Packs whole sentences into chunks of at most ``chunk_size`` characters, repeating trailing sentences
    (up to ``overlap`` characters) at the start of the next chunk. Sentences longer than a chunk are cut by
    LangChain's RecursiveCharacterTextSplitter with CJK-aware separators."""

    def __init__(self, chunk_size: int = 400, overlap: int = 80):
        self.chunk_size = chunk_size
        self.overlap = overlap
        self._long = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size, chunk_overlap=min(overlap, chunk_size // 4),
            separators=["\n\n", "\n", "。", "！", "？", "；", ". ", "，", ", ", "、", " ", ""], keep_separator="end")

    def sentences(self, text: str) -> list[str]:
        out = []
        for piece in _SENTENCE_END.split(text):
            piece = piece.strip() if piece else ""
            if not piece:
                continue
            out.extend(self._long.split_text(piece) if len(piece) > self.chunk_size else [piece])
        return out

    def split_text(self, text: str) -> list[str]:
        chunks, current, size = [], [], 0
        for sentence in self.sentences(text):
            if current and size + len(sentence) > self.chunk_size:
                chunks.append(_join(current))
                # carry the tail sentences that fit in the overlap budget
                carry, carried = [], 0
                for prev in reversed(current):
                    if carried + len(prev) > self.overlap:
                        break
                    carry.insert(0, prev)
                    carried += len(prev)
                current, size = carry, carried
            current.append(sentence)
            size += len(sentence)
        if current:
            chunks.append(_join(current))
        return chunks


def _join(sentences: list[str]) -> str:
    # CJK sentences join without spaces; Latin ones need one.
    out = sentences[0]
    for s in sentences[1:]:
        out += s if (_has_cjk(out[-1:]) or _has_cjk(s[:1])) else " " + s
    return out


def make_chunks(doc_name: str, sections: list[Section], splitter: ChineseSentenceSplitter) -> list[Chunk]:
    """Sections → chunks with position and heading. The indexed text carries the document title and the
    heading so a chunk about "diet" still matches a question naming the bird."""
    title = doc_name.rpartition(".")[0] or doc_name
    chunks: list[Chunk] = []
    for section in sections:
        context = " ".join(part for part in (title, section.heading) if part)
        if section.question is not None:  # Q&A: one chunk, indexed by its question
            chunks.append(Chunk(doc_name, len(chunks), section.text, section.heading,
                                f"{context}\n{section.question}" if section.heading else section.question,
                                {"qa": True}))
            continue
        for piece in splitter.split_text(section.text):
            chunks.append(Chunk(doc_name, len(chunks), piece, section.heading, f"{context}\n{piece}"))
    return chunks
