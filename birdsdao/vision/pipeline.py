"""The vision service: photo bytes → decoded image → bird boxes → crops → species ranking → answer.
Built once per process by ``birdsdao.vision.build``; views call ``detect``, ``teach`` and ``forget``."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import APIError
from ..species.ranges import RANGES_FILE, LocationPrior, RangeTable
from . import annotate, location as geo
from .backbone import load_backbones
from .classifier import Fusion, Guess, Prototypes, SpeciesClassifier
from .detector import Box, build_detector
from .imaging import crop_with_margin, decode_image, to_model_input
from .naming import Reading, flock_context, read_detection
from .taught import TaughtStore, normalize_label, open_store
from .vocabulary import Entry, Vocabulary

log = logging.getLogger(__name__)


@dataclass
class Detection:
    box: Box | None  # None: the whole image (no bird box was found)
    reading: Reading
    image_size: tuple[int, int]  # uploaded image's (w, h), for the whole-image box

    @property
    def species(self) -> list[Guess]:
        return self.reading.species

    def to_dict(self) -> dict:
        if self.box is None:
            box, conf = [0.0, 0.0, float(self.image_size[0]), float(self.image_size[1])], None
        else:
            d = self.box.to_dict()
            box, conf = d["box"], d["box_confidence"]
        return {"box": box, "box_confidence": conf, **self.reading.to_dict()}


@dataclass
class DetectResult:
    width: int
    height: int
    detections: list[Detection]
    is_bird: bool
    annotated_image: str | None = None
    timings_ms: dict = field(default_factory=dict)
    location: geo.Location | None = None  # the place whose prior ranked the species (None: no prior)
    image: object = None  # the decoded (downscaled) PIL image, when detect(keep_image=True): the photo store's copy
    exif: dict = field(default_factory=dict)  # location.read_photo_exif's facts (position, date, time, camera)

    def to_dict(self) -> dict:
        out = {
            "image": {"width": self.width, "height": self.height},
            "detections": [d.to_dict() for d in self.detections],
            "is_bird": self.is_bird,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            "location": self.location.to_dict() if self.location else None,
        }
        if self.annotated_image is not None:
            out["annotated_image"] = self.annotated_image
        return out


class _Clock:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = (now - self.last) * 1000
        self.last = now

    def done(self) -> dict:
        return {**self.laps, "total": (time.perf_counter() - self.start) * 1000}


class VisionPipeline:
    def __init__(self, config: dict, detector, classifier: SpeciesClassifier, catalog, store: TaughtStore):
        self.config = config
        self.detector = detector
        self.classifier = classifier
        self.catalog = catalog
        self.store = store
        self.font_path = annotate.find_font(config["ANNOTATION_FONT"])
        self.write_lock = threading.Lock()  # teach/forget/reload: store + vocabulary change together
        # store.index_key() of the index the classifier's taught species came from, and how many there were
        self._taught_key, self._taught_count = None, 0
        self._load_taught()
        # Location prior over the base vocabulary (taught species appended later stay neutral).
        self.default_location = geo.default_location(config["REGION"])
        ranges = RangeTable.load(config["SPECIES_RANGES"] or RANGES_FILE)
        self.location_prior = LocationPrior(ranges, [e.key for e in classifier.base_vocab.entries])

    @classmethod
    def from_config(cls, config, services) -> "VisionPipeline":
        catalog = services.get("species")  # names and iNat/BIRDS-525 mapping; built before vision
        instance = Path(config["INSTANCE_PATH"])
        detector = build_detector(
            str(config["YOLO_WEIGHTS"]), imgsz=int(config["DETECTOR_IMGSZ"]), conf=float(config["DETECTOR_CONF"]),
            iou=float(config["DETECTOR_IOU"]), backend=config["DETECTOR_BACKEND"],
            cache_dir=Path(config["DETECTOR_CACHE"] or instance / "cache"),
            threads=config["DETECTOR_THREADS"],
        )
        inat, imagenet = load_backbones(config)
        vocab = Vocabulary.from_catalog(catalog, inat.num_outputs)
        base = Prototypes.load(config["PROTOTYPES"])
        label_to_key = {}
        for label in base.keys:
            species = catalog.by_label(label)
            if species is not None:
                label_to_key[label] = species.id
        trained, trained_entries = _trained_species_model(config, catalog)
        fusion = Fusion(alpha=float(config["FUSION_ALPHA"]), alpha_shared=float(config["FUSION_ALPHA_SHARED"]),
                        power=float(config["FUSION_POWER"]),
                        scale=float(config["PROTOTYPE_SCALE"]), generic_min_share=float(config["GENERIC_MIN_SHARE"]),
                        sharpen=float(config["CONFIDENCE_SHARPEN"]), spread=float(config["CONFIDENCE_SPREAD"]),
                        prior_power=float(config["LOCATION_PRIOR_POWER"]), taught_boost=float(config["TAUGHT_BOOST"]))
        classifier = SpeciesClassifier(inat, imagenet, vocab, base, label_to_key, fusion,
                                       mirror_below=float(config["TEST_TIME_MIRROR_BELOW"]), trained=trained,
                                       trained_entries=trained_entries)
        pipeline = cls(config, detector, classifier, catalog, open_store(config, instance))
        pipeline.warm_up()
        return pipeline

    def warm_up(self) -> None:
        """One pass over a blank image so the first user does not pay for lazy initialisation."""
        from PIL import Image

        blank = Image.new("RGB", (320, 240), (128, 128, 128))
        self.detector(blank)
        self.classifier.features(np.stack([to_model_input(blank)]))

    # -- /detect -----------------------------------------------------------------------------------------
    def detect(self, data: bytes, *, top_k: int = 5, annotate_image: bool = True,
               location: geo.Location | None = None, keep_image: bool = False) -> DetectResult:
        """``location``: the place the request named (form lat/lon or region); None lets the photo's EXIF
        GPS, then the configured REGION, decide (``location.resolve``)."""
        clock = _Clock()
        try:
            self._refresh_taught()
        except Exception as exc:  # noqa: BLE001 - a database restarting must not stop /detect
            log.warning("taught species not refreshed, the loaded ones are used: %r", exc)
        image, scale = self._decode(data)
        width, height = round(image.size[0] / scale), round(image.size[1] / scale)
        clock.lap("decode")
        boxes, feats = self.observe(image, clock)
        out_boxes = [b.scaled(1 / scale) if b else None for b in boxes]
        exif = geo.read_photo_exif(data)  # once: the location here, the photo record's date and camera later
        where = geo.resolve(location, exif, self.default_location)
        prior = self.location_prior.vector(where.lat, where.lon) if where else None
        readings = self.read(feats, [b.area if b else None for b in out_boxes], top_k, prior) if boxes else []
        detections = [Detection(b, r, (width, height)) for b, r in zip(out_boxes, readings)]
        clock.lap("classify")
        annotated = None
        if annotate_image:
            items = []
            for det in detections:
                box = det.box.scaled(scale).xyxy if det.box else (0, 0, image.size[0] - 1, image.size[1] - 1)
                g = det.species[0] if det.species else None
                items.append((box, annotate.caption(g.entry.names, g.confidence) if g else "?"))
            annotated = annotate.draw(image, items, self.font_path)
            clock.lap("annotate")
        return DetectResult(width, height, detections, bool(detections), annotated, clock.done(), where,
                            image if keep_image else None, exif)

    def observe(self, image, clock: _Clock | None = None) -> tuple[list[Box | None], object]:
        """The birds of a decoded image: their boxes (None: the whole image) and crop features, in one
        batch; boxes that are neither confident nor bird-like to ImageNet are dropped."""
        boxes = self.detector(image)[: int(self.config["MAX_DETECTIONS"])]
        if clock:
            clock.lap("detect")
        box_min = float(self.config["BIRD_BOX_CONF"])
        imagenet_min = float(self.config["IMAGENET_BIRD_MIN"])
        # The whole image rides in the same batch when no box is confident (it may be the answer).
        need_whole = not any(b.confidence >= box_min for b in boxes)
        crops = [self._crop(image, b) for b in boxes] + ([image] if need_whole else [])
        feats = self.classifier.features(np.stack([to_model_input(c) for c in crops]))
        kept = [i for i, b in enumerate(boxes) if b.confidence >= box_min or feats.imagenet_bird[i] >= imagenet_min]
        if kept:
            return [boxes[i] for i in kept], feats.take(kept)
        whole = len(crops) - 1
        if feats.imagenet_bird[whole] >= imagenet_min:
            return [None], feats.take([whole])
        return [], feats.take([])

    def read(self, feats, areas: list, top_k: int, prior=None) -> list[Reading]:
        """Crops' features → one Reading per crop: ranked species, the answer at the rank that is sure
        enough, look-alikes; birds in one photo are read together (flock context)."""
        probs, state, subspecies = self.classifier.probabilities_with_subspecies(feats, prior)
        cfg = self.config
        flock = flock_context(probs, feats.proto, areas, confident=float(cfg["FLOCK_CONFIDENT"]),
                              min_similarity=float(cfg["FLOCK_MIN_SIMILARITY"]), strength=float(cfg["FLOCK_STRENGTH"]))
        readings = [read_detection(row, state, top_k, self.catalog, answer_min=float(cfg["ANSWER_MIN_CONFIDENCE"]),
                                   lookalike_gap=float(cfg["LOOKALIKE_GAP"]), subspecies=sub)
                    for row, sub in zip(flock, subspecies)]
        for reading, before, after in zip(readings, probs, flock):
            reading.flock_adjusted = not np.array_equal(before, after)
        return readings

    def _decode(self, data: bytes):
        return decode_image(data, max_pixels=int(self.config["MAX_IMAGE_PIXELS"]),
                            max_side=int(self.config["MAX_IMAGE_SIDE"]))

    def _crop(self, image, box):
        return crop_with_margin(image, box.xyxy, float(self.config["CROP_MARGIN"]))

    # -- /species/teach, /species/forget -----------------------------------------------------------------
    def teach(self, raw_label: str, names: dict, images: list[bytes]) -> dict:
        label = normalize_label(raw_label)
        minimum = int(self.config["TAUGHT_MIN_IMAGES"])
        if len(images) < minimum:
            raise APIError(400, "too_few_images", f"teaching needs at least {minimum} images (got {len(images)})")
        crops = []
        for data in images:  # decode everything first: one bad photo refuses the request, nothing changes
            image, _ = self._decode(data)
            boxes = self.detector(image)
            crop = self._crop(image, boxes[0]) if boxes else image
            crops.append(to_model_input(crop))
        # one feature per photo, its mirror always averaged in (as the shipped prototypes hold both views)
        feats = self.classifier.features(np.stack(crops), mirror_below=float("inf")).proto
        # The flock makes records → put one step across gunicorn workers (else two teaches lose one).
        with self.write_lock, self.store.locked():
            records = self.store.records()
            if label in records:
                record = records[label]
                photos = int(record.get("images", 0)) + len(feats)
                feats = np.concatenate([self.store.features(label), feats])
            else:
                # Exact names only: resolve's guesses ("鸳鸯测试" contains 鸳鸯, "灰喜鹊" is inside 伊比利亚灰喜鹊)
                # would file the user's new species under a known one and drop the names they gave.
                species = self.catalog.lookup(raw_label)
                if species is not None:  # improve a species the recognizer already knows
                    record = {"key": species.id, "new": False, "names": species.names()}
                else:
                    record = {"key": f"taught:{label}", "new": True, "names": _taught_names(label, names)}
                photos = len(feats)
            record["images"] = photos
            self.store.put(label, record, feats)
            self._load_taught()
        return {"label": label, "images_used": len(images), "species_count": self.classifier.vocabulary_size(),
                "species": record["names"], "new_species": record["new"]}

    def forget(self, raw_label: str) -> dict:
        label = normalize_label(raw_label)
        with self.write_lock, self.store.locked():
            if not self.store.remove(label):
                raise APIError(404, "unknown_species", f"'{label}' is not a species taught on this server")
            self._load_taught()
        return {"label": label, "forgotten": True, "species_count": self.classifier.vocabulary_size()}

    def taught(self) -> list[dict]:
        return [{"label": label, **record} for label, record in self.store.records().items()]

    def _refresh_taught(self) -> None:
        """Pick up what another worker process taught or forgot: one stat per call while nothing changed."""
        if self.store.index_key() != self._taught_key:
            with self.write_lock:
                if self.store.index_key() != self._taught_key:
                    self._load_taught()

    def _load_taught(self) -> None:
        index_key = self.store.index_key()  # before reading: a write in between makes the next call reload again
        taught, new_entries = {}, []
        records = self.store.load_all()
        for label, (record, feats) in records.items():
            key = record["key"]
            taught[key] = np.concatenate([taught[key], feats]) if key in taught else feats
            if record.get("new"):
                new_entries.append(Entry(key, record["names"], (), taught=True))
        self.classifier.set_taught(taught, new_entries)
        self._taught_key, self._taught_count = index_key, len(records)

    def describe(self) -> dict:
        import ultralytics

        self._refresh_taught()
        return {
            "detector": Path(str(self.config["YOLO_WEIGHTS"])).name,
            "detector_backend": self.detector.backend,
            "detector_imgsz": self.detector.imgsz,
            "ultralytics": ultralytics.__version__,
            "species_vocabulary": self.classifier.vocabulary_size(),
            "species_model": str(self.config["SPECIES_MODEL"] or "") or "litert+prototypes",
            "taught_species": self._taught_count,  # as loaded by the refresh above: no second read of the index
            "catalog": type(self.catalog).__name__,
            "annotation_font": self.font_path,
        }

    @property
    def healthy(self) -> bool:
        return self.font_path is not None


def _trained_species_model(config, catalog):
    """SPECIES_MODEL (a .pt from ``train``/``prune`` or an .onnx from ``export``, labels.txt beside it or
    SPECIES_LABELS) → (model, one vocabulary entry per output), or (None, []) when not configured. Labels the
    catalogue knows (BIRDS-525 folder names) get its names; others are shown as the label itself."""
    path = str(config["SPECIES_MODEL"] or "")
    if not path:
        return None, []
    from .species_model import open_species_model

    model = open_species_model(Path(path), Path(config["SPECIES_LABELS"]) if config["SPECIES_LABELS"] else None)
    entries = []
    for label in model.labels:
        species = catalog.by_label(label)
        entries.append(Entry(species.id, species.names(), tuple(species.inat_indices)) if species is not None
                       else Entry(f"model:{label}", _taught_names(label, {})))
    return model, entries


def _taught_names(label: str, names: dict) -> dict:
    chinese = names.get("chinese_name") or None
    return {
        "label": label,
        "scientific_name": names.get("scientific_name") or None,
        "english_name": names.get("english_name") or label.title(),
        "chinese_name": chinese,
        "chinese_name_source": "user" if chinese else None,
    }
