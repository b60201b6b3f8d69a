"""API keys: who may label and who may administer.

Admin keys may do everything; label keys may label and read the model list. With no admin
key configured, one is generated into DATA_DIR/admin_api_key (mode 0600) so that a first
try needs no set-up; `serve` and `bootstrap` print it the one time it is created.
Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from app.core.config import Settings

KEY_FILE = "admin_api_key"


def _split(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def key_file(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE


def ensure_admin_key(settings: Settings) -> str | None:
    """Create the generated admin key if none is configured; returns it only when it was
    created just now (so the caller can print it once), else None."""
    if _split(settings.admin_api_keys):
        return None
    path = key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    try:
        # O_EXCL: of several processes starting together, exactly one creates the key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


@dataclass(frozen=True)
class ApiKeys:
    admin: tuple[str, ...]
    label: tuple[str, ...]
    label_open: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        admin = _split(settings.admin_api_keys)
        if not admin:
            ensure_admin_key(settings)
            admin = [key_file(settings).read_text().strip()]
        return cls(tuple(admin), tuple(_split(settings.label_api_keys)), settings.label_open)

    @staticmethod
    def _matches(key: str, candidates: tuple[str, ...]) -> bool:
        # Compare against every key, always: the time taken says nothing about which matched.
        found = False
        for candidate in candidates:
            found |= hmac.compare_digest(key.encode(), candidate.encode())
        return found

    def is_admin(self, key: str) -> bool:
        return self._matches(key, self.admin)

    def may_label(self, key: str) -> bool:
        return self._matches(key, self.admin + self.label)
