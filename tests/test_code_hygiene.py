"""The code is not the lab notebook, and each module reads in a sitting.

- No measured figure (texts/s, ms, %, a 2.4x speed-up, MB, points, a decimal number) in a
  comment, a docstring or a field's `description=` / `help=` text of app/ or workers/:
  figures go stale at every rerun, so they live in docs/ (dated, with the command that
  produced them) and the code says why in words and points there. The descriptions count
  because they become the README's generated tables and the CLI's --help.
- No module of app/, workers/, bench/ or research/ over MAX_LINES lines unless its first
  lines say why (`# Long: <reason>`).
- A room of the service imports only the rooms above it in ROOMS (docs/development.md,
  "Layout"), and never bench/ or research/.

Each test lists every offender with its file and line.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# --- measured figures ---------------------------------------------------------------------

_NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"
_RANGE = rf"{_NUMBER}(?:\s*(?:-|to)\s*{_NUMBER})?"
_UNIT = (
    r"(?:texts?/s|tokens?/s|rows?/s|requests?/s|ms|s|seconds?|minutes?|%|"
    r"[KMG]i?B|points?)"
)
FIGURE = re.compile(
    "|".join(
        [
            rf"(?<![\w.+]){_RANGE}\s*{_UNIT}(?![\w/])",  # 29 ms, 1.2-1.5 texts/s, 16.5%, 0.6 GB
            rf"(?<![\w.+]){_RANGE}x\b",  # a speed-up: 2.4x, 1.4-1.8x
            r"(?<![\w.+])\d+\.\d+(?![\d.])",  # any decimal: 0.27, 493.6
            rf"(?<![\w.+]){_NUMBER}\s+against\s+{_NUMBER}",  # 30 against 2
        ]
    )
)

# Numbers that are not measurements: (file pattern, what is allowed, why).
NOT_FIGURES: list[tuple[str, str, str]] = [
    ("app/store/migrations/versions/*", r"Create Date: .*", "Alembic's generated header"),
    ("*", r"\b(?:torch|Python|python|version)\s+\d+(?:\.\d+)+", "a version number"),
    ("*", r"\bdefault:?\s+\d+(?:\.\d+)?", "a setting's default, not a measurement"),
    ("app/cli/docs_tables.py", r"3600, not 3600\.0", "how a default is printed"),
    ("app/ml/joint.py", r"80%\s+become\s+\[MASK\],\s+10%[^,]*,\s+10%", "BERT's masking rule"),
    ("app/ml/promotion.py", r"3 of 6 layers: 0\.5", "a ratio by definition"),
]


def python_files(*folders: str) -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def prose(source: str) -> Iterator[tuple[int, str]]:
    """(first line, text) of every docstring, comment and `description=` / `help=` string."""
    for node in ast.walk(ast.parse(source)):
        text: ast.expr | None = None
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.body and isinstance(node.body[0], ast.Expr):
                text = node.body[0].value
        elif isinstance(node, ast.keyword) and node.arg in ("description", "help"):
            text = node.value
        if isinstance(text, ast.Constant) and isinstance(text.value, str):
            yield text.lineno, text.value
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def measured_figures(path: str) -> list[str]:
    """`path:line: 'figure' in: the line` for every figure in the file's prose."""
    allowed = [re.compile(allow) for pattern, allow, _ in NOT_FIGURES if fnmatch(path, pattern)]
    found = []
    for first_line, text in prose((ROOT / path).read_text()):
        spans = [m.span() for allow in allowed for m in allow.finditer(text)]
        for match in FIGURE.finditer(text):
            if any(start <= match.start() and match.end() <= end for start, end in spans):
                continue
            line = first_line + text.count("\n", 0, match.start())
            context = text.splitlines()[text.count("\n", 0, match.start())].strip()
            figure = " ".join(match.group(0).split())
            found.append(f"{path}:{line}: {figure!r} in: {context}")
    return found


def _figures_report(found: list[str]) -> str:
    return (
        "measured figures in comments, docstrings or descriptions (say why in words and move "
        "the figure to docs/, dated, with its command):\n  " + "\n  ".join(found)
    )


CODE_FILES = python_files("app", "workers")


def test_no_measured_figure_in_the_prose_of_app_and_workers():
    found = [hit for path in CODE_FILES for hit in measured_figures(path)]
    assert found == [], _figures_report(found)


@pytest.mark.parametrize(
    ("text", "figure"),
    [
        ("# on a 2-core CPU a step took 29 ms", "29 ms"),
        ("about 1.7x faster", "1.7x"),
        ("ran 1.4-1.8x as fast", "1.4-1.8x"),
        ("took 16.5% of the samples", "16.5%"),
        ("about 0.6 GB with ONNX Runtime", "0.6 GB"),
        ("lost 0.27 point of dev macro-F1", "0.27 point"),
        ("int8 served 493.6 on average", "493.6"),
        ("30 against 2 of a load client's 32", "30 against 2"),
        ("at 130 texts/s over 1 text", "130 texts/s"),
    ],
)
def test_a_measured_figure_is_found(tmp_path, monkeypatch, text, figure):
    module = tmp_path / "app" / "module.py"
    module.parent.mkdir()
    module.write_text(f'"""{text}"""\n\nX = 1  # {text}\n')
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    found = measured_figures("app/module.py")
    assert [f"app/module.py:1: {figure!r}", f"app/module.py:3: {figure!r}"] == [
        hit.split(" in: ")[0] for hit in found
    ]


@pytest.mark.parametrize(
    "text",
    [
        "413 when the body is too large; 429 with Retry-After",
        "NUL (U+0000) and lone surrogates",
        "deprecated since torch 2.9",
        "ids are 64-bit; 3 classes; batches of 32",
        "(default 0.5); 2 x 1 threads",
    ],
)
def test_what_is_not_a_measurement_passes(tmp_path, monkeypatch, text):
    module = tmp_path / "app" / "module.py"
    module.parent.mkdir()
    module.write_text(f'"""{text}"""\n')
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert measured_figures("app/module.py") == []


# --- long modules -------------------------------------------------------------------------

MAX_LINES = 400
LONG_REASON = re.compile(r"^# Long: \w.{9,}")  # a reason of a few words, not just "# Long:"
REASON_WITHIN = 5  # the reason sits in a module's first lines, before or after a shebang


def too_long(path: str) -> str | None:
    lines = (ROOT / path).read_text().splitlines()
    if len(lines) <= MAX_LINES:
        return None
    if any(LONG_REASON.match(line) for line in lines[:REASON_WITHIN]):
        return None
    return f"{path}: {len(lines)} lines"


def _length_report(found: list[str]) -> str:
    return (
        f"modules over {MAX_LINES} lines without a reason (split them by what they do, or "
        f"put `# Long: <why>` in their first {REASON_WITHIN} lines):\n  " + "\n  ".join(found)
    )


LENGTH_FILES = python_files("app", "workers", "bench", "research")


def test_no_module_over_max_lines_without_a_reason():
    found = [hit for path in LENGTH_FILES if (hit := too_long(path)) is not None]
    assert found == [], _length_report(found)


def test_a_long_module_passes_only_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    body = "\n".join(f"X{i} = {i}" for i in range(MAX_LINES)) + "\n"
    (tmp_path / "long.py").write_text('"""A module."""\n' + body)
    assert too_long("long.py") == f"long.py: {MAX_LINES + 1} lines"
    (tmp_path / "long.py").write_text("# Long:\n" + body)
    assert too_long("long.py") is not None
    (tmp_path / "long.py").write_text("# Long: one table of every setting, read whole\n" + body)
    assert too_long("long.py") is None


# --- rooms -------------------------------------------------------------------------------

# The service's rooms, from the ground floor up: each imports only rooms before it here.
ROOMS = [
    "app/core",
    "app/ml",
    "app/store",
    "app/registry",
    "app/serving",
    "workers",
    "app/api",
    "app/dashboard",
    "app/cli",
    "app/main",
]
OUTSIDE_THE_SERVICE = ["bench", "research", "tests"]


def room_of(module: str) -> str | None:
    """`app.serving.batching` -> `app/serving`; None for a module outside the project."""
    parts = module.split(".")
    if parts[0] == "app" and len(parts) > 1:
        return f"app/{parts[1]}"
    if parts[0] in ("workers", *OUTSIDE_THE_SERVICE):
        return parts[0]
    return None


def upward_imports(path: str) -> list[str]:
    """`path:line: imports X` for each import of a room at or after the module's own."""
    here = room_of(".".join(Path(path).with_suffix("").parts))
    assert here in ROOMS, path
    found = []
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            there = room_of(module)
            if there is None or there == here:
                continue
            if there not in ROOMS or ROOMS.index(there) > ROOMS.index(here):
                found.append(f"{path}:{node.lineno}: {here} imports {module} ({there})")
    return found


ROOM_FILES = [path for path in CODE_FILES if path != "app/__init__.py"]


def test_every_room_of_the_service_is_listed():
    rooms = {room_of(".".join(Path(path).with_suffix("").parts)) for path in ROOM_FILES}
    assert rooms == set(ROOMS)


def test_no_room_imports_one_above_it():
    found = [hit for path in ROOM_FILES for hit in upward_imports(path)]
    assert found == [], (
        "imports that climb (a room imports only the rooms before it in ROOMS; bench/, "
        "research/ and tests/ are never imported):\n  " + "\n  ".join(found)
    )


def test_an_import_that_climbs_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "app" / "store").mkdir(parents=True)
    (tmp_path / "app" / "store" / "rows.py").write_text(
        "from app.core.config import Settings\n"
        "import app.store.tables\n"
        "from app.serving.model_server import ModelServer\n"
        "def f():\n    import bench.load\n"
    )
    assert upward_imports("app/store/rows.py") == [
        "app/store/rows.py:3: app/store imports app.serving.model_server (app/serving)",
        "app/store/rows.py:5: app/store imports bench.load (bench)",
    ]
