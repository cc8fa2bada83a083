"""Conversations (issue #18): on a written set of multi-turn questions (``bench/conversation_set.jsonl``: zh
first, some en; follow-ups with 它/它们/its/they, comparisons, a photo's species_label, names the catalogue
lacks, questions whose answer is not in the cards), through POST /get_response of a real app with the default
retrieval-only backend and the bundled species KB, each turn sent with the history of the turns before it:

- right subject: the answer's card sources are exactly the turn's species (a group name: the group resolved;
  a name the catalogue lacks: said to be missing, no species swapped in; none: no species claimed);
- "not found" precision / recall: the answer quotes nothing and says so, against the turn's label;
- relevant quoted sentences: the share of quoted source sentences that match the turn's rule (target ≥ 0.9),
  and how many answers quote one sentence twice.

    python bench/bench_conversation.py [--show-errors]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from birdsdao import create_app  # noqa: E402
from birdsdao.llm.extractive import split_sentences  # noqa: E402

SET = Path(__file__).with_name("conversation_set.jsonl")
# Written after the rules in extractive.INTENTS / answer.py were tuned on SET, and not tuned on: the honest check.
HELDOUT = Path(__file__).with_name("conversation_heldout.jsonl")
SAID_NOT_FOUND = re.compile(r"资料中没有|The sources say nothing|The documents contain nothing")
CITATION = re.compile(r"\[\d+\]")


def right_subject(body: dict, expected) -> bool:
    resolution = body.get("name_resolution") or {}
    if isinstance(expected, str):
        kind, name = expected.split(":", 1)
        query = (resolution.get("query") or "").lower()
        if kind == "group":
            return resolution.get("status") == "group" and query == name.lower()
        return (resolution.get("status") in ("missing", "suggestions") and query == name.lower()
                and body.get("species") is None)
    if not expected:
        return body.get("species") is None
    cards = {s["species_id"] for s in body["sources"] if s.get("species_id") and s.get("score_kind") != "lookalike"}
    return cards == set(expected)


def quoted(body: dict) -> list[str]:
    """Source sentences the answer quotes (each once), in the order of the sources."""
    response = body["response"]
    out = []
    for source in body["sources"]:
        for sentence in split_sentences(source["text"]):
            if sentence.rstrip("。.") in response and sentence not in out:
                out.append(sentence)
    # a sentence inside a longer quoted one is not quoted on its own
    return [s for s in out if not any(s != o and s in o for o in out)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--show-errors", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"TESTING": True, "INSTANCE_PATH": str(Path(tmp) / "instance"),
                          "SERVICES": ["species", "embedder", "kb", "llm"], "KB_SPECIES_BUILD": "startup"})
        client = app.test_client()
        print(f"app with the species KB built in {time.perf_counter() - t0:.1f} s")
        for title, path in (("written set (rules tuned on it)", SET), ("held-out set (written after)", HELDOUT)):
            conversations = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
            print(f"\n== {title}: {path.name}")
            evaluate(client, conversations, args.show_errors)
    return 0


def evaluate(client, conversations, show_errors) -> None:
    """Print the four measures for one set of conversations."""
    turns = subject_ok = 0
    tp = fp = fn = 0
    relevant = total_quoted = repeats = 0
    errors = []
    t1 = time.perf_counter()
    for conv in conversations:
        history = []
        for turn in conv["turns"]:
            form = {"user_input": turn["q"], "history": json.dumps(history, ensure_ascii=False)}
            if turn.get("label"):
                form["species_label"] = turn["label"]
            r = client.post("/get_response", data=form)
            body = r.get_json()
            assert r.status_code == 200, body
            turns += 1
            problems = []
            if right_subject(body, turn["subject"]):
                subject_ok += 1
            else:
                got = sorted({s.get("species_id") for s in body["sources"] if s.get("species_id")})
                problems.append(f"subject {turn['subject']} got {got} {body.get('name_resolution')}")
            said_nf = not CITATION.search(body["response"]) and bool(SAID_NOT_FOUND.search(body["response"]))
            if said_nf and not turn["found"]:
                tp += 1
            elif said_nf:
                fn_ = "said not found but the answer is there"
                problems.append(fn_)
                fp += 1
            elif not turn["found"]:
                problems.append("quoted something for a question the sources do not answer")
                fn += 1
            if turn["found"] and not said_nf:
                rule = re.compile(turn["rel"], re.I)
                sentences = quoted(body)
                good = [s for s in sentences if rule.search(s)]
                relevant += len(good)
                total_quoted += len(sentences)
                if len(good) < len(sentences):
                    problems.append(f"irrelevant: {[s[:40] for s in sentences if s not in good]}")
            if any(body["response"].count(s.rstrip("。.")) > 1 for s in quoted(body)):
                repeats += 1
                problems.append("a sentence quoted twice")
            if problems:
                errors.append((conv["id"], turn["q"], problems, body["response"][:200]))
            history.append([turn["q"], body["response"]])
    per_turn = (time.perf_counter() - t1) * 1000 / max(turns, 1)
    labelled_nf = sum(not t["found"] for c in conversations for t in c["turns"])
    print(f"{len(conversations)} conversations, {turns} turns ({labelled_nf} not answerable), {per_turn:.0f} ms/turn")
    print(f"right subject            {subject_ok / turns:.3f}  ({subject_ok}/{turns})")
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    print(f"'not found' precision    {precision:.3f}  ({tp}/{tp + fp})")
    print(f"'not found' recall       {recall:.3f}  ({tp}/{tp + fn})")
    share = relevant / total_quoted if total_quoted else float("nan")
    print(f"relevant quoted share    {share:.3f}  ({relevant}/{total_quoted} sentences; target >= 0.9)")
    print(f"answers repeating a sentence: {repeats}")
    if show_errors:
        for cid, q, problems, response in errors:
            print(f"  {cid} {q!r}: {'; '.join(problems)}\n      -> {response!r}")


if __name__ == "__main__":
    raise SystemExit(main())
