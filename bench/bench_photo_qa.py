"""Questions about a photo (issue #17) answered by the retrieval-only backend, through the real HTTP path:
/detect keeps the photo, /get_response answers with its photo_id.

    python bench/bench_photo_qa.py [--limit N] [--show]

bench/photo_qa.csv holds the labelled set: 100 questions over 26 natural-dev/natural-val photos, of kinds
count, position, place, date (date/season) and species, plus sex ("雄鸟还是雌鸟？": quoted from the card when it
tells the sexes apart, else "cannot tell") and card (questions for the species cards, "它吃什么？", which must
NOT be taken for photo facts: the expected regex refuses the photo label and wants the card's words). Counts and positions were judged by eye on the
photos; species are the photos' folder labels. Places and dates are synthetic: each photo is copied to a
temporary folder with the row's GPS position and DateTimeOriginal written into its EXIF by Pillow (a blank
lat/taken: none written), so place answers test EXIF reading + offline reverse geocoding, and the GPS also
moves the species ranking through the location prior (issue #15), as it would for a real upload.

A row is right when: count: the first number of the answer equals the expected count; the other kinds: the
expected text (a regex) appears in the answer, with "也可能是 …"/"possibly …" runner-up phrases removed.
Also printed: count accuracy of the naive rule "one bird per detection box" against the answer's rule (an unsure
box lying mostly inside a larger box is the same bird: PHOTO_SAME_BIRD_INSIDE, chosen on this set).
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from birdsdao import create_app  # noqa: E402

SHARED = ROOT.parent / "shared"
DATASETS = SHARED / "datasets"
QUESTIONS = Path(__file__).with_name("photo_qa.csv")
RUNNER_UP = re.compile(r"，也可能是[^（]*（\d+%）|, possibly [^(]*\(\d+%\)")
NUMBER = re.compile(r"\d+")


def _dms(value: float) -> tuple:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    return (float(degrees), float(minutes), round((value - degrees - minutes / 60) * 3600, 2))


def with_exif(data: bytes, lat: float | None, lon: float | None, taken: str | None) -> bytes:
    """A JPEG copy of the photo with a GPS IFD and DateTimeOriginal (only what is given)."""
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    if lat is not None:
        exif.get_ifd(0x8825).update({1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W",
                                     4: _dms(lon)})
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def correct(kind: str, expected: str, answer: str) -> bool:
    if kind == "count":
        found = NUMBER.search(answer)
        return found is not None and int(found.group()) == int(expected)
    return re.search(expected, RUNNER_UP.sub("", answer)) is not None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos")
    parser.add_argument("--show", action="store_true", help="print every question, answer and verdict")
    args = parser.parse_args()
    rows = list(csv.DictReader(QUESTIONS.open(encoding="utf-8")))
    photos: dict[str, tuple] = {}
    for row in rows:
        exif = (float(row["lat"]) if row["lat"] else None, float(row["lon"]) if row["lon"] else None, row["taken"] or None)
        if photos.setdefault(row["photo"], exif) != exif:
            raise SystemExit(f"{row['photo']}: every row of a photo must give the same EXIF")
    names = list(photos)[: args.limit or None]
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"INSTANCE_PATH": tmp, "YOLO_WEIGHTS": str(SHARED / "weights" / "yolov8n.pt"),
                          "SERVICES": ["species", "vision", "llm"], "DEFAULT_MODEL": "extractive"})
        client = app.test_client()
        ids, naive_n = {}, {}
        t0 = time.perf_counter()
        for name in names:
            lat, lon, taken = photos[name]
            copy = Path(tmp) / "copies" / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(with_exif((DATASETS / name).read_bytes(), lat, lon, taken))
            r = client.post("/detect", data={"image": (io.BytesIO(copy.read_bytes()), copy.name), "annotate": 0})
            body = r.get_json()
            assert r.status_code == 200 and body["photo_id"], body
            ids[name], naive_n[name] = body["photo_id"], len(body["detections"])
        detect_s = time.perf_counter() - t0
        per_kind = defaultdict(lambda: [0, 0])
        naive = [0, 0]
        t0 = time.perf_counter()
        for row in rows:
            if row["photo"] not in ids:
                continue
            r = client.post("/get_response", data={"user_input": row["question"], "photo_id": ids[row["photo"]]})
            body = r.get_json()
            assert r.status_code == 200, body
            ok = correct(row["kind"], row["expected"], body["response"])
            per_kind[row["kind"]][0] += ok
            per_kind[row["kind"]][1] += 1
            if row["kind"] == "count":
                naive[0] += naive_n[row["photo"]] == int(row["expected"])
                naive[1] += 1
            if args.show or not ok:
                print(f"{'ok  ' if ok else 'MISS'} [{row['kind']}] {row['photo'].split('/')[-1]} {row['question']} "
                      f"(expected {row['expected']}) -> {body['response'][:160]!r}")
        answer_s = time.perf_counter() - t0
    total = [sum(v[0] for v in per_kind.values()), sum(v[1] for v in per_kind.values())]
    print(f"\n{len(names)} photos, {total[1]} questions (detect {detect_s:.1f} s, answers {answer_s:.1f} s)")
    print("kind      correct / asked   accuracy")
    for kind in ("count", "position", "place", "date", "species", "sex", "card"):
        if kind in per_kind:
            ok, n = per_kind[kind]
            print(f"{kind:9} {ok:7d} / {n:<5d}    {ok / n:.2f}")
    print(f"{'all':9} {total[0]:7d} / {total[1]:<5d}    {total[0] / total[1]:.2f}")
    if naive[1]:
        print(f"count, naive one-bird-per-box: {naive[0]}/{naive[1]} = {naive[0] / naive[1]:.2f} "
              f"(answers, same-bird boxes merged: {per_kind['count'][0]}/{per_kind['count'][1]})")


if __name__ == "__main__":
    main()
