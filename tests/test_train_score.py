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


# --- score captions: pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L, CIDEr ------------------------------------------
from pathlib import Path  # noqa: E402

from birdsdao.train.score import caption_scores, caption_tokens  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = ROOT / "bench" / "natural_dev_captions.jsonl"
NATURAL_DEV = ROOT.parent / "shared" / "datasets" / "natural-dev"


def test_reference_captions_cover_each_natural_dev_photo_in_english_and_chinese():
    rows = [json.loads(line) for line in CAPTIONS.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 30 and len({r["id"] for r in rows}) == 30
    if NATURAL_DEV.is_dir():
        assert {r["id"] for r in rows} == {p.name for p in NATURAL_DEV.iterdir() if p.is_dir()}
        assert all((NATURAL_DEV.parent / r["image"]).is_file() for r in rows)
    for r in rows:
        assert r["species"].split()[-1].lower() in r["en"].lower() and r["species_zh"] in r["zh"]
        assert r["en"].isascii() and all("\u4e00" <= c <= "\u9fff" for c in r["species_zh"])


def test_caption_tokens_drop_punctuation_and_split_chinese_by_character_or_jieba_word():
    assert caption_tokens("A Killdeer, on a rock.") == "a killdeer on a rock"
    assert caption_tokens("一只旅鸫，停在树枝上。") == "一 只 旅 鸫 停 在 树 枝 上"
    assert "树枝" in caption_tokens("一只旅鸫停在树枝上。", "jieba").split()


def test_score_captions_is_at_max_for_the_reference_set_against_itself_and_lower_when_shuffled(tmp_path):
    rows = [json.loads(line) for line in CAPTIONS.read_text(encoding="utf-8").splitlines()]
    ids = [r["id"] for r in rows]
    # Each photo gets the next photo's captions: same vocabulary and style, wrong bird.
    shuffled = _jsonl(tmp_path / "shuffled.jsonl", [{**r, "id": i} for r, i in zip(rows, ids[1:] + ids[:1])])
    table = main(["score", "captions", "--refs", str(CAPTIONS), "--hyps", str(CAPTIONS), str(shuffled),
                  "--out", str(tmp_path)])
    for lang in ("en", "zh"):
        same, other = table[f"{CAPTIONS}:{lang}"], table[f"{shuffled}:{lang}"]
        assert same["items"] == other["items"] == 30
        for metric in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l"):
            assert same[metric] == pytest.approx(100), (lang, metric)
            assert other[metric] < 0.6 * same[metric], (lang, metric)
        assert same["cider"] == pytest.approx(1000)  # CIDEr-D's maximum: 10, here x100
        assert other["cider"] < 0.2 * same["cider"]
    saved = json.loads((tmp_path / "score" / "caption_scores.json").read_text(encoding="utf-8"))
    assert saved["zh_tokens"] == "char" and len(saved["scores"]) == 4


def test_without_java_meteor_is_reported_unavailable_with_the_reason(monkeypatch, tmp_path):
    assert caption_scores(["a b"], [["a b"]])["meteor_note"] == "METEOR not requested"  # java is here
    refs = _jsonl(tmp_path / "refs.jsonl", [{"id": "a", "en": "a bird sits on a branch"}])
    hyps = _jsonl(tmp_path / "hyps.jsonl", [{"id": "a", "en": "a bird on a branch"}])
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no java on it
    s = main(["score", "captions", "--lang", "en", "--refs", str(refs), "--hyps", str(hyps), "--out", str(tmp_path)])
    s = s[f"{hyps}:en"]
    assert s["meteor"] is None and "Java" in s["meteor_note"] and 0 < s["bleu_1"] < 100

