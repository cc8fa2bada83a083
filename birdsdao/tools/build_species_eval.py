"""``python -m birdsdao.tools.build_species_eval``: ``birdsdao/species/data/eval_questions.jsonl``, questions per
species whose expected source is its card (run after ``build_species_data``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build_species_data import DATA_DIR, write_jsonl
from ..species.cards import doc_name
from ..species.catalog import SpeciesCatalog

# (kind, template). The first is the seed question of the original project.
ZH_TEMPLATES = (
    ("about", "请告诉我些关于{name}的知识吧？"),
    ("habitat", "{name}生活在哪里？"),
    ("diet", "{name}吃什么？"),
)
EN_TEMPLATES = (
    ("diet", "What does the {name} eat?"),
    ("habitat", "Where does the {name} live?"),
)


def build_questions(catalog: SpeciesCatalog) -> list[dict]:
    questions = []
    for species in catalog.all():
        target = {"species_id": species.id, "doc_name": doc_name(catalog.record(species.id))}
        zh_name = species.chinese_name or species.english_name
        for lang, templates, name in (("zh", ZH_TEMPLATES, zh_name), ("en", EN_TEMPLATES, species.english_name)):
            for kind, template in templates:
                questions.append({"question": template.format(name=name), "lang": lang, "kind": kind, **target})
    return questions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DATA_DIR / "eval_questions.jsonl"))
    args = parser.parse_args(argv)
    questions = build_questions(SpeciesCatalog.load())
    write_jsonl(questions, Path(args.out))
    print(f"{len(questions)} questions -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
