"""``python -m birdsdao.tools.build_seed_vectors [--out FILE]``: the e5-small vectors of every species-card
chunk, so a fresh server builds the bundled species KB without embedding (re-run after editing the cards)."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ..config import DEFAULTS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULTS["KB_SEED_VECTORS"])
    args = parser.parse_args(argv)

    from .. import create_app
    from ..kb.species_kb import card_documents, ensure_species_kb

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"INSTANCE_PATH": tmp, "SERVICES": ["species", "embedder", "kb"],
                          "KB_SPECIES_BUILD": "off", "KB_SEED_VECTORS": None})
        registry = app.extensions["birdsdao"]
        model = registry.get("embedder").get()
        model.recorded = {}
        start = time.perf_counter()
        result = ensure_species_kb(registry.get("kb"), card_documents(registry.get("species")))
        keys = sorted(model.recorded)
        vectors = np.stack([model.recorded[k] for k in keys]).astype(np.float16)
        out = Path(args.out)
        tmp_out = out.with_suffix(".tmp.npz")
        np.savez_compressed(tmp_out, keys=np.array(keys), vectors=vectors, version=np.array(model.version))
        tmp_out.replace(out)
        print(f"{result['documents']} cards, {len(keys)} passage vectors in {time.perf_counter() - start:.0f} s "
              f"-> {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
