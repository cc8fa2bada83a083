"""``score``: BLEU-4, ROUGE-L and chrF of answers against references, with Chinese tokenisation (characters or
jieba words), one row per hypothesis file (metric definitions: README.md)."""
from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from pathlib import Path

from .common import summary, write_json

HELP = "BLEU / ROUGE-L / chrF of hypothesis JSONL files against a reference JSONL (Chinese-aware)"

TEXT_KEYS = ("text", "answer", "output", "caption", "reference", "hypothesis")
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+(?:['’][A-Za-z]+)?|[^\sA-Za-z0-9]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refs", required=True, type=Path, help='references, one JSON object per line ({"id", "text"}; '
                                                            '"text" may be a list of references)')
    p.add_argument("--hyps", required=True, type=Path, nargs="+", help="one or more hypothesis JSONL files")
    p.add_argument("--key", default=None, help=f"text field (default: first of {', '.join(TEXT_KEYS)})")
    p.add_argument("--tokenize", choices=("char", "jieba"), default="char",
                   help="char: each Chinese character and each Latin word is a token; jieba: Chinese words")
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--name", default="score")


def tokenize(text: str, mode: str = "char") -> list[str]:
    if mode == "jieba":
        from ..segment import words

        return [t for piece in words(text) for t in (_TOKEN.findall(piece) if piece.isascii() else [piece.strip()])
                if t and not t.isspace()]
    return _TOKEN.findall(text.lower())


def _ngrams(tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hyps: list[list[str]], refs: list[list[list[str]]], max_n: int = 4) -> float:
    """Corpus BLEU × 100."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for h, rs in zip(hyps, refs):
        hyp_len += len(h)
        ref_len += min((len(r) for r in rs), key=lambda L: (abs(L - len(h)), L))  # closest reference length
        for n in range(1, max_n + 1):
            hc = _ngrams(h, n)
            best = Counter()
            for r in rs:
                best |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, best[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def lcs_length(a: list, b: list) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyps: list[list[str]], refs: list[list[list[str]]]) -> float:
    """Mean LCS F1 × 100."""
    scores = []
    for h, rs in zip(hyps, refs):
        best = 0.0
        for r in rs:
            lcs = lcs_length(h, r)
            if lcs:
                p, rec = lcs / len(h), lcs / len(r)
                best = max(best, 2 * p * rec / (p + rec))
        scores.append(best)
    return 100 * sum(scores) / len(scores) if scores else 0.0


def chrf(hyps: list[str], refs: list[list[str]], max_n: int = 6, beta: float = 2.0) -> float:
    """Corpus chrF × 100 on raw strings (whitespace removed); with several references, the best-matching one."""
    stats = [[0, 0, 0] for _ in range(max_n)]  # matches, hyp n-grams, ref n-grams
    for h, rs in zip(hyps, refs):
        h = re.sub(r"\s+", "", h)
        best = None
        for r in rs:
            r = re.sub(r"\s+", "", r)
            s = []
            for n in range(1, max_n + 1):
                hc, rc = _ngrams(h, n), _ngrams(r, n)
                s.append([sum((hc & rc).values()), sum(hc.values()), sum(rc.values())])
            if best is None or _chrf_from(s, beta) > _chrf_from(best, beta):
                best = s
        for n in range(max_n):
            for k in range(3):
                stats[n][k] += best[n][k]
    return 100 * _chrf_from(stats, beta)


def _chrf_from(stats, beta: float) -> float:
    precs, recs = [], []
    for m, hn, rn in stats:
        if hn and rn:  # orders longer than the text don't count
            precs.append(m / hn)
            recs.append(m / rn)
    if not precs:
        return 0.0
    p, r = sum(precs) / len(precs), sum(recs) / len(recs)
    return 0.0 if p + r == 0 else (1 + beta ** 2) * p * r / (beta ** 2 * p + r)


def read_jsonl(path: Path, key: str | None) -> list[tuple[str | None, list[str]]]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if isinstance(obj, str):
            obj = {"text": obj}
        field = key or next((k for k in TEXT_KEYS if k in obj), None)
        if field is None or field not in obj:
            raise ValueError(f"{path}:{n}: no text field (looked for {key or ', '.join(TEXT_KEYS)})")
        texts = obj[field] if isinstance(obj[field], list) else [obj[field]]
        rows.append((None if obj.get("id") is None else str(obj["id"]), [str(t) for t in texts]))
    return rows


def pair_up(refs, hyps, hyp_path) -> tuple[list[str], list[list[str]]]:
    """Match by ``id`` when both files have ids, else by line order."""
    if all(i is not None for i, _ in refs) and all(i is not None for i, _ in hyps):
        by_id = {i: t for i, t in hyps}
        missing = [i for i, _ in refs if i not in by_id]
        if missing:
            raise ValueError(f"{hyp_path}: no answer for ids {', '.join(missing[:5])}")
        return [by_id[i][0] for i, _ in refs], [t for _, t in refs]
    if len(refs) != len(hyps):
        raise ValueError(f"{hyp_path}: {len(hyps)} lines but {len(refs)} references (and no ids to match by)")
    return [t[0] for _, t in hyps], [t for _, t in refs]


def score_texts(hyps: list[str], refs: list[list[str]], mode: str = "char") -> dict:
    th = [tokenize(h, mode) for h in hyps]
    tr = [[tokenize(r, mode) for r in rs] for rs in refs]
    return {"items": len(hyps), "bleu": bleu(th, tr), "rouge_l": rouge_l(th, tr), "chrf": chrf(hyps, refs)}


def run(args) -> dict:
    from tqdm import tqdm

    refs = read_jsonl(args.refs, args.key)
    table = {}
    for path in tqdm(args.hyps, desc="score"):
        hyps, matched = pair_up(refs, read_jsonl(path, args.key), path)
        table[str(path)] = score_texts(hyps, matched, args.tokenize)
    out = Path(args.out) / args.name
    write_json(out / "scores.json", {"refs": str(args.refs), "tokenize": args.tokenize, "scores": table})
    rows = {Path(p).name: f"BLEU {s['bleu']:6.2f}  ROUGE-L {s['rouge_l']:6.2f}  chrF {s['chrf']:6.2f}  ({s['items']} items)"
            for p, s in table.items()}
    rows["scores"] = out / "scores.json"
    summary(f"score ({args.tokenize} tokens)", rows)
    return table
