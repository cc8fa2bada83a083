"""``score``: BLEU-4, ROUGE-L and chrF of answers against references, with Chinese tokenisation (characters or
jieba words), one row per hypothesis file; ``score captions``: the COCO caption metrics (BLEU-1..4, METEOR,
ROUGE-L, CIDEr from pycocoevalcap) per language (metric definitions: README.md)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

from .common import summary, write_json

HELP = ("BLEU / ROUGE-L / chrF of hypothesis JSONL files against a reference JSONL (Chinese-aware); "
        "'score captions': BLEU-1..4, METEOR, ROUGE-L, CIDEr per language")

TEXT_KEYS = ("text", "answer", "output", "caption", "reference", "hypothesis")
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+(?:['’][A-Za-z]+)?|[^\sA-Za-z0-9]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", nargs="?", choices=("answers", "captions"), default="answers",
                   help="answers: BLEU-4 / ROUGE-L / chrF; captions: the COCO caption metrics, one row per language "
                        '(files hold {"id", "en", "zh"} per photo, as bench/natural_dev_captions.jsonl)')
    p.add_argument("--refs", required=True, type=Path, help='references, one JSON object per line ({"id", "text"}; '
                                                            '"text" may be a list of references)')
    p.add_argument("--hyps", required=True, type=Path, nargs="+", help="one or more hypothesis JSONL files")
    p.add_argument("--key", default=None, help=f"text field (default: first of {', '.join(TEXT_KEYS)})")
    p.add_argument("--tokenize", choices=("char", "jieba"), default="char",
                   help="char: each Chinese character and each Latin word is a token; jieba: Chinese words")
    p.add_argument("--lang", nargs="+", default=["en", "zh"], help="captions: the language fields scored")
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


# --- captions: the COCO caption evaluation's scorers (pycocoevalcap) -------------------------------------
CAPTION_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


def caption_tokens(text: str, mode: str = "char") -> str:
    """A caption as the space-joined tokens the COCO scorers expect: lower-cased words (each Chinese character,
    or jieba word with ``mode="jieba"``), punctuation dropped as the COCO PTB tokenisation does."""
    return " ".join(t for t in tokenize(text, mode) if t[0].isalnum())  # str.isalnum() holds for CJK too


def meteor_unavailable() -> str | None:
    """Why METEOR cannot be computed here, or None: pycocoevalcap runs METEOR 1.5 (a Java jar)."""
    return None if shutil.which("java") else "METEOR needs Java (pycocoevalcap runs meteor-1.5.jar); no java on PATH"


@contextlib.contextmanager
def meteor_scorer():
    """pycocoevalcap's METEOR (one JVM, loaded once for every file and language scored), or None where it cannot
    run. Its wrapper closes only stdin (in ``__del__``): the JVM and its pipes are ended here."""
    if meteor_unavailable():
        yield None
        return
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        yield scorer
    finally:
        proc = scorer.meteor_p
        proc.stdin.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def caption_scores(hyps: list[str], refs: list[list[str]], mode: str = "char", meteor=None) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) × 100 of one caption per item against its references
    (pycocoevalcap's scorers; CIDEr's document frequencies come from these references). METEOR (``meteor``,
    from ``meteor_scorer()``) is None, with ``meteor_note``, where it cannot run."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not hyps:
        raise ValueError("no captions to score")
    res = {i: [caption_tokens(h, mode)] for i, h in enumerate(hyps)}
    gts = {i: [caption_tokens(r, mode) for r in rs] for i, rs in enumerate(refs)}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its n-gram counts
        bleus = Bleu(4).compute_score(gts, res, verbose=0)[0]
    out = {"items": len(hyps), **{f"bleu_{n}": 100 * b for n, b in enumerate(bleus, 1)},
           "rouge_l": 100 * Rouge().compute_score(gts, res)[0], "cider": 100 * Cider().compute_score(gts, res)[0]}
    out["meteor"] = None if meteor is None else 100 * meteor.compute_score(gts, res)[0]
    if meteor is None:
        out["meteor_note"] = meteor_unavailable() or "METEOR not requested"
    return out


def run_captions(args) -> dict:
    refs = {lang: read_jsonl(args.refs, lang) for lang in args.lang}
    table = {}
    with meteor_scorer() as meteor:
        for path in args.hyps:
            for lang in args.lang:
                hyps, matched = pair_up(refs[lang], read_jsonl(path, lang), path)
                mode = args.tokenize if lang == "zh" else "char"
                table[f"{path}:{lang}"] = caption_scores(hyps, matched, mode, meteor=meteor)
    out = Path(args.out) / args.name
    write_json(out / "caption_scores.json", {"refs": str(args.refs), "zh_tokens": args.tokenize, "scores": table})
    rows = {}
    for key, s in table.items():
        meteor = "  n/a" if s["meteor"] is None else f"{s['meteor']:5.1f}"
        rows[Path(key).name] = ("  ".join(f"B{n} {s[f'bleu_{n}']:5.1f}" for n in range(1, 5))
                                + f"  METEOR {meteor}  ROUGE-L {s['rouge_l']:5.1f}  CIDEr {s['cider']:6.1f}"
                                + f"  ({s['items']} items)")
    if any(s["meteor"] is None for s in table.values()):
        rows["METEOR"] = meteor_unavailable()
    rows["scores"] = out / "caption_scores.json"
    summary(f"caption scores (x100; Chinese as {args.tokenize} tokens)", rows)
    return table


def run(args) -> dict:
    from tqdm import tqdm

    if args.task == "captions":
        return run_captions(args)

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
