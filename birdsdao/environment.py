"""Process environment that libraries read once, when first imported. ``birdsdao/__init__.py`` imports this
module before anything else, so every entry point (server.py, gunicorn, the flask CLI, the tests) gets it
before any model code imports those libraries."""
from __future__ import annotations

import os
import sys

# Ultralytics pip-installs missing extras on first use (pi-heif, when Pillow cannot identify an upload), which
# on a server would run pip from a request thread. It reads these names once, in ultralytics/utils/__init__.py
# (AUTOINSTALL = env_bool("YOLO_AUTOINSTALL", True); is_online() returns False under YOLO_OFFLINE).
os.environ["YOLO_AUTOINSTALL"] = "false"  # forced: the server never installs packages by itself
# YOLO_OFFLINE: no DNS probe, PyPI update check or telemetry (weights named like "yolov8n.pt" still download);
# an operator may set YOLO_OFFLINE=0.
os.environ.setdefault("YOLO_OFFLINE", "1")

# A script imported ultralytics before birdsdao: switch it off in every module that copied the flag
# (ultralytics.utils, .checks, .export.tensorflow, ...).
for _name, _module in list(sys.modules.items()):
    if _name.startswith("ultralytics") and getattr(_module, "AUTOINSTALL", None) is True:
        _module.AUTOINSTALL = False
