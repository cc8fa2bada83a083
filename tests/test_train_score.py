"""`score`: BLEU / ROUGE-L / chrF against hand-computed values (and sacrebleu's published definitions),
Chinese tokenisation, and the JSONL command with id matching."""
from __future__ import annotations

import json
import math

import pytest

from birdsdao.train.__main__ import main
from birdsdao.train.score import bleu, chrf, lcs_length, rouge_l, tokenize


def test_bleu_matches_hand_computation():
    h, r = "a b c d e f g".split(), "a b c d e f h".split()
    # p1..p4 = 6/7, 5/6, 4/5, 3/4; equal lengths so no brevity penalty.
    expected = 100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25
    assert bleu([h], [[r]]) == pytest.approx(expected)


def test_bleu_brevity_penalty_and_no_4gram_match():
    h, r = "a b c d".split(), "a b c d e f g h".split()
    assert bleu([h], [[r]]) == pytest.approx(100 * math.exp(1 - 8 / 4))
    assert bleu([["the", "cat", "sat", "on", "mat"]], [[["the", "cat", "is", "on", "mat"]]]) == 0.0


def test_rouge_l_is_the_lcs_f1():
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    h, r = "a b c d e f g".split(), "a b c d e f h".split()
    assert rouge_l([h], [[r]]) == pytest.approx(100 * 6 / 7)
    assert rouge_l([h, ["x"]], [[r], [["y"]]]) == pytest.approx(100 * 6 / 7 / 2)


def test_chrf_matches_hand_computation():
    # n=1: P=R=2/3; n=2: P=R=1/2; n=3: 0; n>=4: no n-grams, not counted -> P=R=(2/3+1/2)/3 = 7/18.
    assert chrf(["abc"], [["abd"]]) == pytest.approx(100 * 7 / 18)
    assert chrf(["a b c"], [["abc"]]) == pytest.approx(100.0)  # whitespace is ignored


def test_chinese_is_tokenised_per_character_or_jieba_word():
    assert tokenize("白头海雕 Bald Eagle.") == ["白", "头", "海", "雕", "bald", "eagle", "."]
    words = tokenize("白头海雕是美国的国鸟", "jieba")
    assert "美国" in words and "".join(words) == "白头海雕是美国的国鸟"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_command_matches_by_id_and_ranks_backends(tmp_path):
    refs = _jsonl(tmp_path / "refs.jsonl", [{"id": 1, "text": "白头海雕是鹰科的鸟类。"}, {"id": 2, "text": "麻雀很常见。"}])
    good = _jsonl(tmp_path / "good.jsonl", [{"id": 2, "answer": "麻雀很常见。"}, {"id": 1, "answer": "白头海雕是鹰科的鸟类。"}])
    poor = _jsonl(tmp_path / "poor.jsonl", [{"id": 1, "answer": "不知道。"}, {"id": 2, "answer": "麻雀。"}])
    table = main(["score", "--refs", str(refs), "--hyps", str(good), str(poor), "--out", str(tmp_path)])
    assert table[str(good)]["bleu"] == pytest.approx(100) and table[str(good)]["chrf"] == pytest.approx(100)
    assert table[str(poor)]["rouge_l"] < table[str(good)]["rouge_l"]
    assert json.loads((tmp_path / "score" / "scores.json").read_text(encoding="utf-8"))["scores"]


def test_score_command_refuses_missing_answers(tmp_path):
    refs = _jsonl(tmp_path / "refs.jsonl", [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}])
    hyps = _jsonl(tmp_path / "hyps.jsonl", [{"id": 1, "text": "a"}])
    with pytest.raises(SystemExit, match="no answer for ids 2"):
        main(["score", "--refs", str(refs), "--hyps", str(hyps), "--out", str(tmp_path)])
