"""The model registry: versioned model folders under MODEL_DIR, their rows in the store,
and which one serves. Everything that makes or activates a version goes through here.

- `folders`: `MODEL_DIR/v{N}`, written whole and renamed into place, never written again;
- `card`: the model card each folder carries;
- `publish`: `publish()` (write, then activate by compare-and-set and notify the API
  processes), `settle_pending()` (decide a candidate that waited for reviews) and
  `activate()` (an operator's rollback).
"""

from app.registry.folders import (
    METADATA_FILE,
    MODEL_CARD_FILE,
    live_version_dirs,
    sweep_temporary,
    version_dir,
    write_version,
)
from app.registry.publish import (
    PENDING,
    SWAP_CHANNEL,
    NotServable,
    PublishConflict,
    Published,
    UnknownVersion,
    activate,
    activate_if_champion,
    notify_swap,
    publish,
    settle_pending,
)

__all__ = [
    "METADATA_FILE",
    "MODEL_CARD_FILE",
    "PENDING",
    "SWAP_CHANNEL",
    "NotServable",
    "Published",
    "PublishConflict",
    "UnknownVersion",
    "activate",
    "activate_if_champion",
    "live_version_dirs",
    "notify_swap",
    "publish",
    "settle_pending",
    "sweep_temporary",
    "version_dir",
    "write_version",
]
