"""``python -m birdsdao.tools.build_species_data [SHARED_DATA_DIR]``: ``birdsdao/species/data/species.jsonl``
from the published reference tables plus the project's own data, each field marked with its source."""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import write_atomic
from . import DATA_DIR
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
BIRDS525_TABLE = "birds525_species_reference.csv"
INAT_TABLE = "inat_bird_species_reference.csv"

# Species texts shorter than this (characters) also carry their family's overview on the card.
SHORT_TEXT = 90

# The list a published Chinese name comes from, when it is not the shared tables' own (unnamed) list:
# ``chinese_name_ref`` on the record, named on the card. ioc_zh_names.csv; data/README.md has the details.
IOC_REF = "IOC World Bird List v15.1"

IUCN_ZH = {
    "LC": "无危", "NT": "近危", "VU": "易危", "EN": "濒危", "CR": "极危",
    "EW": "野外灭绝", "EX": "灭绝", "DD": "数据缺乏", "NE": "未评估",
}


def _clean(value: str | None) -> str:
    """Table cells: strip, and undo the ``\\xd7`` escapes the iNat labels carry for the hybrid sign."""
    value = (value or "").strip().replace("\\xd7", "×")
    return value.rstrip(".")  # "Vestiaria coccinea." in BIRDS-525


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: _clean(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _inat_label_parts(label: str) -> tuple[str, str]:
    """``"Corvus corax (Common Raven)"`` -> (``"Corvus corax"``, ``"Common Raven"``); the 2017 names."""
    if "(" not in label:
        return label, ""
    sci, _, rest = label.partition(" (")
    return sci.strip(), rest[:-1].strip() if rest.endswith(")") else rest.strip()


def make_label(english_name: str) -> str:
    """The generated label of a species with no BIRDS-525 label: English upper-cased, apostrophes dropped."""
    return " ".join(english_name.replace("'", "").replace("’", "").upper().split())


@dataclass
class Row:
    """One table row, normalised: ``source`` is ``"birds525"`` or ``"inat"``."""
    source: str
    scientific_name: str
    english_name: str
    chinese_name: str
    order: str
    family: str
    iucn_status: str
    ebird_code: str
    match: str
    birds525_label: str = ""
    inat_index: int | None = None
    label_names: tuple[str, ...] = ()   # the data set's own spellings (iNat 2017 name, BIRDS-525 label)

    @property
    def filled(self) -> int:
        return sum(bool(v) for v in (self.order, self.family, self.iucn_status, self.ebird_code,
                                     self.chinese_name)) + (self.match != "none")


@dataclass
class Merged:
    rows: list[Row] = field(default_factory=list)


def read_tables(shared_data: Path) -> list[Row]:
    rows: list[Row] = []
    for r in _read_csv(shared_data / BIRDS525_TABLE):
        rows.append(Row("birds525", r["scientific_name"], r["english_name"], r["chinese_name"], r["order"],
                        r["family"], r["iucn_status"], r["ebird_code"], r["match"],
                        birds525_label=r["label"], label_names=(r["label"],)))
    for r in _read_csv(shared_data / INAT_TABLE):
        if r["label"] == "background":
            continue
        sci2017, en2017 = _inat_label_parts(r["label"])
        rows.append(Row("inat", r["scientific_name"], r["english_name"], r["chinese_name"], r["order"],
                        r["family"], r["iucn_status"], r["ebird_code"], r["match"],
                        birds525_label=r["birds525_label"], inat_index=int(r["index"]),
                        label_names=tuple(x for x in (sci2017, en2017) if x)))
    return rows


def group_rows(rows: list[Row], merges: dict[str, str] | None = None) -> list[list[Row]]:
    """Group rows naming the same species: same scientific name, or an iNat row that the table links to a
    BIRDS-525 label (the link survives renames such as Phalacrocorax auritus -> Nannopterum auritum)."""
    merges = merges or {}
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    by_label = {r.birds525_label: r for r in rows if r.source == "birds525"}
    for r in rows:
        find(r.scientific_name)
        if r.source == "inat" and r.birds525_label in by_label:
            union(r.scientific_name, by_label[r.birds525_label].scientific_name)
    # Unmatched BIRDS-525 rows that the project identified as a species already in the vocabulary.
    for sci, into in merges.items():
        if sci in parent and into in parent:
            union(sci, into)
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(find(r.scientific_name), []).append(r)
    return list(groups.values())


def _first(rows: list[Row], attr: str) -> str:
    return next((getattr(r, attr) for r in rows if getattr(r, attr)), "")


def _read_project_csv(name: str) -> list[dict]:
    path = DATA_DIR / name
    return _read_csv(path) if path.exists() else []


def load_project_tables() -> dict:
    """The project's own data files (all optional so the generator runs at every stage of the work)."""
    descriptions = {}
    path = DATA_DIR / "descriptions.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    item = json.loads(line)
                    descriptions[item["scientific_name"]] = item
    families = {}
    path = DATA_DIR / "family_descriptions.tsv"
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            families = {r["family"]: r["zh"] for r in csv.DictReader(fh, delimiter="\t")}
    aliases: dict[str, list[str]] = {}
    for r in _read_project_csv("aliases.csv"):
        aliases.setdefault(r["scientific_name"], []).append(r["alias"])
    return {
        "orders_zh": {r["order"]: r["order_zh"] for r in _read_project_csv("orders_zh.csv")},
        "families_zh": {r["family"]: r["family_zh"] for r in _read_project_csv("families_zh.csv")},
        "zh_names": {r["scientific_name"]: r["chinese_name"] for r in _read_project_csv("project_zh_names.csv")
                     if r.get("chinese_name")},
        # Published, not the project's: IOC names matched to catalogue ids by build_ioc_names.
        "ioc_zh": {r["species_id"]: r["chinese_name"] for r in _read_project_csv("ioc_zh_names.csv")
                   if r.get("chinese_name")},
        "taxonomy": {r["scientific_name"]: r for r in _read_project_csv("taxonomy_fixes.csv")},
        "ranks": {r["scientific_name"]: r["rank"] for r in _read_project_csv("taxonomy_fixes.csv") if r.get("rank")},
        "aliases": aliases,
        "merges": {r["scientific_name"]: r["into"] for r in _read_project_csv("project_merges.csv")},
        "descriptions": descriptions,
        "family_descriptions": families,
    }


def _src(value, source: str):
    return source if value else None


def merge_group(group: list[Row], project: dict, by_sci: dict[str, dict]) -> dict:
    """One species record from the rows that name it (best-matched row first)."""
    group = sorted(group, key=lambda r: (-(r.match != "none"), -r.filled, r.source != "inat",
                                         r.inat_index if r.inat_index is not None else 10**6))
    main = group[0]
    sid = main.scientific_name
    b525 = sorted((r for r in group if r.source == "birds525"), key=lambda r: (r.match == "none", r.birds525_label))
    birds525_label = next((r.birds525_label for r in group if r.source == "inat" and r.birds525_label), "") \
        or (b525[0].birds525_label if b525 else "")
    english = main.english_name if main.match != "none" else (
        next((r.english_name for r in group if r.source == "inat"), "") or main.english_name)
    record: dict = {"id": sid, "scientific_name": sid, "english_name": english}
    record["label"] = birds525_label or make_label(english)
    record["birds525_label"] = birds525_label or None
    record["birds525_labels"] = sorted(r.birds525_label for r in b525)
    record["inat_indices"] = sorted(r.inat_index for r in group if r.inat_index is not None)

    chinese, chinese_source, chinese_ref = _first(group, "chinese_name"), "published", None
    extra_zh: list[str] = []
    if chinese:
        # The published list writes alternatives inline ("麻雀 (树麻雀)", "美洲中杓鹬/中杓鹬"): the first is
        # the name, the others (and the cell as printed) stay as aliases so every spelling resolves.
        parts = [p.strip() for p in re.split(r"[/()（）]", chinese) if p.strip()]
        if len(parts) > 1:
            extra_zh = [*parts[1:], chinese]
            chinese = parts[0]
    # Where the tables have none: the IOC list's name, else the project's own translation. The other
    # names stay aliases (an old project name still finds its species; so does the IOC name of a species
    # whose table name differs), unless another species has that name (build_records checks).
    ioc, own = project["ioc_zh"].get(sid), project["zh_names"].get(sid)
    if not chinese and ioc:
        chinese, chinese_ref = ioc, IOC_REF
    elif not chinese and own:
        chinese, chinese_source, chinese_ref = own, "project", None
    extra_zh += [n for n in (ioc, own) if n and n != chinese]
    record["chinese_name"] = chinese or None
    record["chinese_name_source"] = chinese_source if chinese else None
    record["chinese_name_ref"] = chinese_ref if chinese else None

    sources: dict[str, str | None] = {}
    # Taxonomy: the tables first; a subspecies/domestic form inherits its parent species' published row;
    # rows the tables left unmatched take the project's own taxonomy_fixes.csv.
    order, family = _first(group, "order"), _first(group, "family")
    iucn, ebird = _first(group, "iucn_status"), _first(group, "ebird_code")
    tax_source = "published"
    if not (order and family):
        parent = by_sci.get(" ".join(sid.split()[:2]))
        if parent and parent is not record and parent.get("order"):
            order, family = parent["order"], parent["family"]
            tax_source = "published (parent species)"
        elif sid in project["taxonomy"]:
            fix = project["taxonomy"][sid]
            order, family = fix.get("order", ""), fix.get("family", "")
            tax_source = "project"
    record["order"], record["family"] = order or None, family or None
    sources["order"] = _src(order, tax_source)
    sources["family"] = _src(family, tax_source)
    record["order_zh"] = project["orders_zh"].get(order) or None
    record["family_zh"] = project["families_zh"].get(family) or None
    sources["order_zh"] = _src(record["order_zh"], "project")
    sources["family_zh"] = _src(record["family_zh"], "project")
    record["iucn_status"] = iucn or None
    record["iucn_status_zh"] = IUCN_ZH.get(iucn) if iucn else None
    sources["iucn_status"] = _src(iucn, "published")
    record["ebird_code"] = ebird or None
    sources["ebird_code"] = _src(ebird, "published")
    sources["chinese_name"] = record["chinese_name_source"]

    aliases: list[str] = []
    for r in group:
        aliases += [r.scientific_name, r.english_name, r.chinese_name, *r.label_names]
    aliases += extra_zh + project["aliases"].get(sid, [])
    seen = {sid.casefold(), english.casefold(), (chinese or "").casefold(), record["label"].casefold()}
    record["aliases"] = []
    for a in aliases:
        if a and a.casefold() not in seen:
            seen.add(a.casefold())
            record["aliases"].append(a)

    desc = project["descriptions"].get(sid)
    if desc is None and project["family_descriptions"].get(family):
        # No species text yet: what is true of the whole family, labelled as such on the card.
        desc = {"zh": project["family_descriptions"][family], "en": None, "kind": "family"}
    record["description"] = {
        "zh": desc.get("zh") if desc else None,
        "en": desc.get("en") if desc else None,
        "kind": (desc.get("kind") or "species") if desc else None,   # "species" | "family"
    }
    # A short species text leaves diet/habitat questions unanswered: add what is true of the whole
    # family, rendered under its own labelled heading.
    family_text = project["family_descriptions"].get(family)
    if desc and record["description"]["kind"] == "species" and family_text and len(desc["zh"]) < SHORT_TEXT:
        record["description"]["family_zh"] = family_text
    sources["description"] = "project" if desc else None
    record["sources"] = sources
    return record


RANKS = ("species", "subspecies", "hybrid", "genus", "family", "not_a_taxon")


def name_rank(scientific_name: str) -> str:
    """What a scientific name names, from its form: one word is a genus, or a family when it ends in
    -idae (BIRDS-525's coarse classes: CROW = Corvus, ALBATROSS = Diomedeidae); two words a species; three
    a subspecies or domestic form (Hirundo rustica erythrogaster, Gallus gallus domesticus); a name with
    the hybrid sign a hybrid."""
    words = scientific_name.split()
    if "×" in words:
        return "hybrid"
    if len(words) == 1:
        return "family" if scientific_name.endswith("idae") else "genus"
    return "species" if len(words) == 2 else "subspecies"


def add_ranks(records: list[dict], ranks: dict[str, str]) -> None:
    """Fill ``rank``, ``genus``, ``parent`` (a subspecies' species, when in the vocabulary), ``hybrid_of``
    and, for genus/family classes, ``members`` (the species-rank ids of that genus or family). ``ranks``
    are the project's overrides (taxonomy_fixes.csv) for names whose form misleads."""
    by_id = {r["id"]: r for r in records}
    for r in records:
        sid = r["id"]
        rank = ranks.get(sid) or name_rank(sid)
        if rank not in RANKS:
            raise ValueError(f"{sid}: unknown rank {rank!r}")
        words = sid.split()
        r["rank"] = rank
        r["genus"] = words[0] if rank not in ("family", "not_a_taxon") else None
        parent = " ".join(words[:2]) if rank == "subspecies" else None
        r["parent"] = parent if parent in by_id else None
        # "Larus glaucescens × occidentalis": the second parent is written with its genus left out.
        hybrid_of = []
        if rank == "hybrid":
            left, _, right = sid.partition(" × ")
            right = right if " " in right else f"{words[0]} {right}"
            hybrid_of = [x for x in (left, right) if x in by_id]
        r["hybrid_of"] = hybrid_of
        r["members"] = []
        r["sources"]["rank"] = "project" if sid in ranks else None
    for r in records:
        if r["rank"] == "genus":
            r["members"] = sorted(m["id"] for m in records if m["rank"] == "species" and m["genus"] == r["id"])
        elif r["rank"] == "family":
            r["members"] = sorted(m["id"] for m in records if m["rank"] == "species" and m["family"] == r["id"])


def build_records(shared_data: Path) -> list[dict]:
    rows = read_tables(shared_data)
    project = load_project_tables()
    groups = group_rows(rows, project["merges"])
    # Species rows first so that subspecies can inherit their parent's taxonomy.
    groups.sort(key=lambda g: (len(g[0].scientific_name.split()) > 2, g[0].scientific_name))
    by_sci: dict[str, dict] = {}
    records = []
    for group in groups:
        record = merge_group(group, project, by_sci)
        by_sci[record["id"]] = record
        records.append(record)
    records.sort(key=lambda r: r["id"])
    settle_shared_names(records, project)
    add_ranks(records, project["ranks"])
    return records


def settle_shared_names(records: list[dict], project: dict) -> None:
    """Chinese names stay unique. An IOC name that the tables already give another species (IOC v15.1
    lumps the Green Heron into the Striated Heron and calls that 北美绿鹭, the tables' name of the Green
    Heron) gives way to the project's name. An IOC name or old project name kept as an alias must not be
    another species' main Chinese name (the card would list it among this species' names): it is dropped."""
    tables = {r["chinese_name"] for r in records
              if r["chinese_name_source"] == "published" and not r["chinese_name_ref"]}
    for r in records:
        own = project["zh_names"].get(r["id"])
        if r["chinese_name_ref"] == IOC_REF and r["chinese_name"] in tables and own:
            r["aliases"] = [a for a in r["aliases"] if a != own]
            r["chinese_name"], r["chinese_name_source"], r["chinese_name_ref"] = own, "project", None
            r["sources"]["chinese_name"] = "project"
    owner = {r["chinese_name"]: r["id"] for r in records if r["chinese_name"]}
    for r in records:
        kept = {project["ioc_zh"].get(r["id"]), project["zh_names"].get(r["id"])}
        r["aliases"] = [a for a in r["aliases"] if a not in kept or owner.get(a, r["id"]) == r["id"]]


def write_jsonl(records: list[dict], path: Path) -> None:
    """Atomic, durable write (a reader never sees half a file); world-readable, as it is shipped data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in records)
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")), mode=0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared_data", nargs="?", default=str(DEFAULT_SHARED_DATA),
                        help="folder with the two reference CSVs (default: <project>/../shared/data)")
    parser.add_argument("--out", default=str(DATA_DIR / "species.jsonl"))
    args = parser.parse_args(argv)
    records = build_records(Path(args.shared_data))
    write_jsonl(records, Path(args.out))
    n_pub = sum(r["chinese_name_source"] == "published" for r in records)
    n_ioc = sum(r["chinese_name_ref"] == IOC_REF for r in records)
    n_proj = sum(r["chinese_name_source"] == "project" for r in records)
    kinds = [r["description"]["kind"] for r in records]
    print(f"{len(records)} species -> {args.out}; Chinese names: {n_pub} published ({n_ioc} from the "
          f"{IOC_REF}), {n_proj} project, "
          f"{len(records) - n_pub - n_proj} missing; descriptions: {kinds.count('species')} species-level, "
          f"{kinds.count('family')} family-level", file=sys.stderr)
    ranks = [r["rank"] for r in records]
    print("ranks: " + ", ".join(f"{ranks.count(k)} {k}" for k in RANKS if k in ranks), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
