"""Where and when a photo was taken (issue #15): EXIF GPS and date, the lat/lon/region fields of /detect and
their precedence, the range prior from AVONET, and the end-to-end check that a Chinese position ranks Asian
BIRDS-525 species above their North American look-alikes. Real detector, models, catalogue and range data."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from birdsdao.species.ranges import FLOOR, REGIONS, LocationPrior, RangeTable
from birdsdao.vision.classifier import _apply_prior
from birdsdao.errors import APIError
from birdsdao.vision.location import check_position, read_exif

from .conftest import BIRDS525, NATURAL
from .test_detect import client, post  # noqa: F401 - client: the module-scoped /detect app

CHINA = (31.2, 114.0)  # Wuhan
NEW_YORK = (40.7, -74.0)
# BIRDS-525 label of an Asian species → the catalogue name of a North American look-alike in the vocabulary.
# Without a location the first three have the look-alike in second place (the ibis at 0.43 against 0.54).
ASIAN_LOOKALIKES = {
    "EURASIAN MAGPIE": "Black-billed Magpie",
    "CRESTED KINGFISHER": "Belted Kingfisher",
    "ASIAN CRESTED IBIS": "White Ibis",
    "DAURIAN REDSTART": "American Redstart",
}


def _dms(value: float) -> tuple:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    return (float(degrees), float(minutes), round((value - degrees - minutes / 60) * 3600, 2))


def with_exif(data: bytes, lat=None, lon=None, date=None, gps: dict | None = None) -> bytes:
    """The photo re-saved as JPEG with a GPS IFD (and DateTimeOriginal) written by Pillow."""
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    if lat is not None:
        ifd = exif.get_ifd(0x8825)
        ifd.update({1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W", 4: _dms(lon)})
    if gps is not None:
        exif.get_ifd(0x8825).update(gps)
    if date is not None:
        exif.get_ifd(0x8769)[0x9003] = date
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def robin() -> bytes:
    return next((NATURAL / "American_Robin").iterdir()).read_bytes()


@pytest.fixture
def vision_app(make_app, tmp_path_factory):
    """An app of its own for a test that changes the configuration (REGION)."""
    cache = str(tmp_path_factory.getbasetemp() / "onnx-cache")
    return lambda **config: make_app(services=["species", "vision"], DETECTOR_CACHE=cache, **config)


@pytest.fixture(scope="module")
def app(client):
    return client.application


@pytest.fixture(scope="module")
def table():
    return RangeTable.load()


# ---------------------------------------------------------------- EXIF

def test_exif_gps_position_and_date_are_read_from_a_photo():
    data = with_exif(robin(), lat=-33.8568, lon=151.2153, date="2024:05:01 07:30:00")
    (lat, lon), date = read_exif(data)
    assert lat == pytest.approx(-33.8568, abs=1e-3) and lon == pytest.approx(151.2153, abs=1e-3)
    assert date == "2024-05-01"


@pytest.mark.parametrize("gps", [
    {1: "N", 2: (1.0, 2.0), 3: "E", 4: (1.0, 2.0, 3.0)},  # two numbers, not degrees/minutes/seconds
    {1: "Q", 2: (10.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # no such hemisphere
    {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # beyond the pole
], ids=["short", "bad-ref", "out-of-range"])
def test_broken_exif_gps_is_ignored_and_the_photo_still_answers(client, gps):
    data = with_exif(robin(), gps=gps, date="not a date")
    assert read_exif(data) == (None, None)
    r = post(client, data, annotate="0")
    assert r.status_code == 200 and r.json["location"] is None and r.json["is_bird"]


# ---------------------------------------------------------------- request fields

@pytest.mark.parametrize("fields, word", [
    ({"lat": "91", "lon": "0"}, "'lat' must be between -90 and 90"),
    ({"lat": "0", "lon": "-180.5"}, "'lon' must be between -180 and 180"),
    ({"lat": "nan", "lon": "0"}, "'lat'"),
    ({"lat": "0", "lon": "inf"}, "'lon'"),
    ({"lat": "north", "lon": "0"}, "'lat' must be a number"),
    ({"lat": "1" * 40, "lon": "0"}, "'lat' must be a number"),
    ({"lat": "40.7"}, "'lon' is missing"),
    ({"lon": "-74"}, "'lat' is missing"),
    ({"region": "atlantis"}, "'region' must be one of"),
    ({"region": "China"}, "'region' must be one of"),  # names are exact
    ({"region": "../etc/passwd", "lat": "1", "lon": "1"}, "'region' must be one of"),  # checked even when lat/lon win
])
def test_bad_location_fields_are_refused_with_400(client, fields, word):
    r = post(client, robin(), annotate="0", **fields)
    assert r.status_code == 400 and r.json["code"] == "bad_field", r.json
    assert word in r.json["error"]


@pytest.mark.parametrize("lat", [True, [1], {"a": 1}, 10 ** 400, "1e999"])
def test_json_shaped_lat_values_are_refused_by_the_same_check(lat):
    # /detect needs a multipart upload, so a JSON body never reaches this check; other clients of it might.
    with pytest.raises(APIError) as err:
        check_position(lat, 1)
    assert err.value.status == 400 and err.value.code == "bad_field"


def test_unknown_config_region_leaves_vision_unavailable_and_says_why(vision_app):
    r = post(vision_app(REGION="atlantis").test_client(), robin())
    assert r.status_code == 503 and "REGION must be one of" in r.json["error"], r.json


def test_precedence_form_position_then_region_then_exif_then_default(vision_app):
    client = vision_app(REGION="europe").test_client()
    chinese_photo = with_exif(robin(), *CHINA, date="2023:10:02 08:00:00")

    def where(data, **fields):
        r = post(client, data, annotate="0", **fields)
        assert r.status_code == 200, r.json
        return r.json["location"]

    loc = where(chinese_photo, lat="40.7", lon="-74.0", region="australia")
    assert (loc["source"], loc["lat"], loc["lon"], loc["region"]) == ("form", 40.7, -74.0, None)
    assert loc["date"] == "2023-10-02"  # the photo's date rides along whichever place wins
    loc = where(chinese_photo, region="australia")
    assert (loc["source"], loc["region"], loc["lat"]) == ("region", "australia", REGIONS["australia"].lat)
    loc = where(chinese_photo)
    assert loc["source"] == "exif" and loc["lat"] == pytest.approx(CHINA[0], abs=1e-3)
    loc = where(robin())  # no EXIF: the deployment's REGION
    assert (loc["source"], loc["region"], loc["date"]) == ("default", "europe", None)


def test_no_location_anywhere_means_no_prior(client):
    r = post(client, robin(), annotate="0")
    assert r.status_code == 200 and r.json["location"] is None


# ---------------------------------------------------------------- the prior

def test_range_data_covers_most_of_the_vocabulary(app, table):
    with app.app_context():
        from birdsdao.services import get_service

        keys = [e.key for e in get_service("vision").classifier.base_vocab.entries]
    assert sum(k in table.index for k in keys) >= 1200  # 1,233 of 1,265 (species/data/README.md)


def test_every_range_row_names_a_catalogue_species(app, table):
    # ranges.csv is built from species.jsonl (build_ranges.py): a renamed id would silently lose its range.
    with app.app_context():
        from birdsdao.services import get_service

        catalog = get_service("species")
    assert [sid for sid in table.species if catalog.get(sid) is None] == []


def test_prior_weights_north_american_species_up_at_home_and_down_in_china(table):
    species = ["Cardinalis cardinalis", "Aix sponsa", "Cyanocitta cristata", "Setophaga ruticilla"]
    asian = ["Aix galericulata", "Phoenicurus auroreus", "Ardeola bacchus", "Nipponia nippon"]
    assert all(k in table.index for k in species + asian)
    keys = species + asian + ["taught:SOMETHING", "Gallus gallus domesticus"]
    at_home = table.weights(*NEW_YORK, keys)
    in_china = table.weights(*CHINA, keys)
    assert (at_home[:4] >= 0.95).all() and (in_china[4:8] >= 0.5).all(), (at_home, in_china)
    assert (in_china[:4] < 0.2).all() and (at_home[4:8] < 0.2).all(), (at_home, in_china)
    assert (in_china >= FLOOR).all() and (at_home >= FLOOR).all()  # down-weighted, never removed
    assert at_home[-2:].tolist() == [1.0, 1.0] and in_china[-2:].tolist() == [1.0, 1.0]  # no data: neutral


def test_genus_class_takes_the_union_of_its_members_ranges(table):
    # CROW (Corvus) has members on every continent but South America; Paridae are across the north.
    for point in (NEW_YORK, CHINA, (-25.0, 135.0)):
        assert table.weights(*point, ["Corvus"])[0] == pytest.approx(1.0)


def test_prior_vectors_are_cached_per_place_and_read_only(table):
    prior = LocationPrior(table, ["Aix sponsa", "Aix galericulata"])
    first = prior.vector(40.71, -74.01)
    assert prior.vector(40.7, -74.0) is first  # rounded to 0.1 degree
    assert not first.flags.writeable


def test_prior_multiplies_and_renormalises_each_row_and_leaves_taught_entries_neutral():
    probs = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]])
    out = _apply_prior(probs, np.array([0.1, 1.0, 1.0]))  # the 4th entry (taught since) has no prior
    assert np.allclose(out.sum(1), 1.0)
    assert np.allclose(out[0], np.array([0.05, 0.3, 0.2, 0.0]) / 0.55)
    assert out[1, 3] > probs[1, 3]


# ---------------------------------------------------------------- the check, end to end

def _rank(species_list, catalog, label_or_name):
    sp = catalog.by_label(label_or_name) or catalog.lookup(label_or_name)
    ids = [s["scientific_name"] for s in species_list]
    return ids.index(sp.scientific_name) + 1 if sp.scientific_name in ids else None


def _conf(species_list, catalog, label_or_name):
    return species_list[_rank(species_list, catalog, label_or_name) - 1]["confidence"]


def test_chinese_gps_ranks_asian_species_above_north_american_lookalikes(app, client, record_property):
    from birdsdao.services import get_service

    with app.app_context():
        catalog = get_service("species")
    rows = []
    for label, lookalike in ASIAN_LOOKALIKES.items():
        plain = (BIRDS525 / label / "4.jpg").read_bytes()
        r0 = post(client, plain, top_k="20", annotate="0")
        r1 = post(client, with_exif(plain, *CHINA), top_k="20", annotate="0")
        assert r0.status_code == r1.status_code == 200
        assert r0.json["location"] is None and r1.json["location"]["source"] == "exif"
        before, after = r0.json["detections"][0]["species"], r1.json["detections"][0]["species"]
        asian_after, look_after = _rank(after, catalog, label), _rank(after, catalog, lookalike)
        rows.append((label, _rank(before, catalog, label), _rank(before, catalog, lookalike), asian_after, look_after,
                     before[0]["confidence"], after[0]["confidence"]))
        assert asian_after is not None and (look_after is None or asian_after < look_after), rows[-1]
        if look_after is not None:  # the look-alike loses probability, the Asian species gains
            assert _conf(after, catalog, lookalike) < _conf(before, catalog, lookalike)
            assert _conf(after, catalog, label) > _conf(before, catalog, label)
    record_property("asian_vs_lookalike_ranks", rows)
    print("\n(label, Asian rank / look-alike rank without location, the same with Chinese GPS, top conf before/after)")
    for row in rows:
        print(row)


def test_herring_gull_keeps_its_american_range_from_the_wider_concept(table):
    # BirdLife splits American Herring Gull; the iNat head's Herring Gull (Clements) includes it, and without
    # range_concepts.csv the prior put the east's commonest large gull at the floor.
    at_home = table.weights(*NEW_YORK, ["Larus argentatus", "Larus fuscus"])
    assert at_home[0] >= 0.95 and at_home[1] < at_home[0], at_home


def test_build_ranges_adds_the_rows_of_a_wider_concept():
    from birdsdao.tools.build_ranges import build

    avonet = [{"name": n, "family": "Laridae", "min_lat": "30", "max_lat": "70", "centroid_lat": lat,
               "centroid_lon": lon, "range_km2": "1000000", "migration": "2"}
              for n, lat, lon in (("Larus argentatus", "60", "20"), ("Larus smithsonianus", "50", "-80"))]
    species = [{"id": "Larus argentatus", "aliases": [], "family": "Laridae"}]
    rows, counts = build(avonet, species, {"Larus argentatus": ["Larus smithsonianus"]})
    assert [(r["species_id"], r["avonet_name"], r["match"]) for r in rows] == [
        ("Larus argentatus", "Larus argentatus", "scientific name"),
        ("Larus argentatus", "Larus smithsonianus", "wider concept")]
    rows, _ = build(avonet, species, {})
    assert len(rows) == 1
