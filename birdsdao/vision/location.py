"""Where and when a photo was taken: the EXIF GPS position and date of an upload, and the one rule that picks
the place /detect uses (form lat/lon > form region > photo EXIF > the deployment's REGION > none)."""
from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass

from ..errors import APIError
from ..species.ranges import REGIONS
from .imaging import _pillow_open

log = logging.getLogger(__name__)

_GPS_IFD, _EXIF_IFD = 0x8825, 0x8769
_DATETIME_ORIGINAL, _DATETIME = 0x9003, 0x0132
_MAKE, _MODEL = 0x010F, 0x0110
_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})(?:[ T](\d{2}):(\d{2}))?")
_PRINTABLE = re.compile(r"[^\w .,+()/\-]+")


@dataclass(frozen=True)
class Location:
    lat: float
    lon: float
    source: str  # "form" | "region" | "exif" | "default"
    region: str | None = None
    date: str | None = None  # YYYY-MM-DD from the photo's EXIF, when it has one

    def to_dict(self) -> dict:
        return {"lat": round(self.lat, 4), "lon": round(self.lon, 4), "region": self.region,
                "source": self.source, "date": self.date}


def check_position(lat, lon) -> tuple[float, float]:
    """Finite numbers in range, or a 400 that names the field."""
    out = []
    for name, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if isinstance(value, bool) or (isinstance(value, str) and len(value) > 32):
            raise APIError(400, "bad_field", f"'{name}' must be a number")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise APIError(400, "bad_field", f"'{name}' must be a number") from None
        if not math.isfinite(number) or not -limit <= number <= limit:
            raise APIError(400, "bad_field", f"'{name}' must be between {-limit:g} and {limit:g}")
        out.append(number)
    return out[0], out[1]


def region_location(name: str, source: str) -> Location:
    region = REGIONS.get(name)
    if region is None:
        raise APIError(400, "bad_field", f"'region' must be one of: {', '.join(sorted(REGIONS))}")
    return Location(region.lat, region.lon, source, region=name)


def default_location(name: str | None) -> Location | None:
    """The deployment's REGION (config); an unknown name stops start-up rather than being ignored."""
    if not name:
        return None
    if name not in REGIONS:
        raise ValueError(f"REGION must be one of {sorted(REGIONS)} (got {name!r})")
    return region_location(name, "default")


def _rational(value) -> float:
    return float(value[0]) / float(value[1]) if isinstance(value, tuple) and len(value) == 2 else float(value)


def _dms(values, ref, positive: str, negative: str) -> float:
    if not isinstance(values, tuple) or len(values) != 3:
        raise ValueError("GPS coordinate is not degrees/minutes/seconds")
    degrees, minutes, seconds = (_rational(v) for v in values)
    number = degrees + minutes / 60 + seconds / 3600
    ref = ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref or positive)
    ref = ref.strip("\x00 ").upper() or positive
    if ref not in (positive, negative):
        raise ValueError(f"GPS reference {ref!r}")
    return -number if ref == negative else number


def read_exif(data: bytes) -> tuple[tuple[float, float] | None, str | None]:
    """(lat, lon) from the GPS IFD and the capture date (YYYY-MM-DD) of an already decoded upload. Anything
    missing, broken or out of range is None: EXIF is the photo's metadata, never a reason to refuse it."""
    facts = read_photo_exif(data)
    return facts["position"], facts["date"]


def read_photo_exif(data: bytes) -> dict:
    """What the photo's EXIF says about its taking: ``position`` (lat, lon), ``date`` (YYYY-MM-DD), ``time``
    (HH:MM, local to the camera) and ``camera`` (make and model, printable characters only, at most 64).
    Missing or broken parts are None."""
    facts = {"position": None, "date": None, "time": None, "camera": None}
    try:
        exif = _pillow_open()(io.BytesIO(data)).getexif()
    except Exception:
        return facts
    try:
        gps = exif.get_ifd(_GPS_IFD)
        if gps and 2 in gps and 4 in gps:
            lat = _dms(gps[2], gps.get(1), "N", "S")
            lon = _dms(gps[4], gps.get(3), "E", "W")
            if math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180:
                facts["position"] = (lat, lon)
    except Exception as exc:  # zero denominators, wrong types, truncated IFDs
        log.info("EXIF GPS ignored: %r", exc)
    try:
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        if isinstance(raw, bytes):
            raw = raw.decode("ascii", "replace")
        match = _EXIF_DATE.match(raw) if isinstance(raw, str) else None
        if match:
            year, month, day = (int(g) for g in match.groups()[:3])
            if 1800 <= year <= 2200 and 1 <= month <= 12 and 1 <= day <= 31:
                facts["date"] = f"{year:04d}-{month:02d}-{day:02d}"
                if match.group(4) is not None and int(match.group(4)) < 24 and int(match.group(5)) < 60:
                    facts["time"] = f"{match.group(4)}:{match.group(5)}"
    except Exception as exc:
        log.info("EXIF date ignored: %r", exc)
    try:
        make, model = (_PRINTABLE.sub("", _text(exif.get(tag))).strip() for tag in (_MAKE, _MODEL))
        # Model often repeats Make ("Canon" + "Canon EOS R5"): say it once.
        camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
        facts["camera"] = camera[:64] or None
    except Exception as exc:
        log.info("EXIF camera ignored: %r", exc)
    return facts


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def resolve(requested: Location | None, exif: dict, default: Location | None) -> Location | None:
    """The place /detect uses: what the request said (form lat/lon or region), else the photo's EXIF GPS
    (``exif``: ``read_photo_exif``'s facts), else the deployment default. The photo's date rides along
    whichever place wins."""
    position, date = exif["position"], exif["date"]
    if requested is not None:
        chosen = requested
    elif position is not None:
        chosen = Location(position[0], position[1], "exif")
    else:
        chosen = default
    if chosen is None:
        return None
    return Location(chosen.lat, chosen.lon, chosen.source, chosen.region, date)
