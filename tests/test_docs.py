"""The README stays the user's manual: every setting and every route is documented."""

from __future__ import annotations

import re
from pathlib import Path

from app.cli.docs_tables import with_generated_tables
from app.core.config import Settings
from app.main import create_app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in README]
    assert missing == [], f"settings missing from README.md: {missing}"


def test_the_settings_and_job_parameter_tables_are_the_generated_ones():
    assert with_generated_tables(README) == README, (
        "README.md's configuration or job-parameter table differs from app/core/config.py / "
        "app/ml/job_params.py; regenerate them with `python -m app.cli.docs_tables "
        "--write-readme` (from the checkout root)"
    )


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_is_in_the_api_table():
    app = create_app(Settings(data_dir=Path("/nonexistent")), job_queue=object())
    paths = set(app.openapi()["paths"])
    assert {"/label", "/jobs/{job_id}", "/models/{version}/activate"} <= paths
    documented = {_shape(p) for p in re.findall(r"`(?:GET|POST) (/[^` ]*)", README)}
    missing = sorted(p for p in paths if _shape(p) not in documented)
    assert missing == [], f"routes missing from README.md's API table: {missing}"
