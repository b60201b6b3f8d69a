"""The manual's generated tables: the job parameters (README.md) and the settings
(docs/configuration.md), rendered from their pydantic models so the manual cannot drift
from the code.

`python -m app.cli.docs_tables` prints them; `--write-readme` rewrites each one between its
markers in its page (`<!-- settings-table:start -->` ... `<!-- settings-table:end -->`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from app.core.config import Settings
from app.ml.job_params import JobParams, Section, flat_name, sections


def _shown_default(value: object) -> str:
    if value is None or value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"  # 3600, not 3600.0: what one would write in the environment
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(model: type[BaseModel], name: Callable[[str], str], skip: set[str]) -> list[str]:
    """A table row per field of `model` (but `skip`): `name(field)`'s cells, its default
    and its description."""
    rows = []
    for field_name, field in model.model_fields.items():
        if field_name in skip:
            continue
        if not field.description:
            raise ValueError(
                f"{model.__name__}.{field_name} has no description: give it Field(description=...)"
            )
        default = _shown_default(field.get_default(call_default_factory=True))
        rows.append(f"| {name(field_name)} | {default} | {_cell(field.description)} |")
    return rows


def fields_table(model: type[BaseModel], header: str, name: Callable[[str], str]) -> str:
    """One row per field: its name as the user writes it, its default and its description."""
    rows = [f"| {header} | default | meaning |", "| --- | --- | --- |"]
    return "\n".join(rows + _rows(model, name, set())) + "\n"


def _section_names(section: str, kind: type[Section]) -> Callable[[str], str]:
    return lambda field: f"`{section}.{field}` | `{flat_name(kind, field)}`"


def job_params_tables() -> str:
    """The job parameters, a table per section (the shared ones first), each parameter by
    its nested name and by its flat one."""
    header = ["| parameter | flat name | default | meaning |", "| --- | --- | --- | --- |"]
    groups: list[tuple[str, type[BaseModel], Callable[[str], str], set[str]]] = [
        (
            "**Shared** by both training stages",
            JobParams,
            lambda n: f"`{n}` | `{n}`",
            set(sections()),
        )
    ]
    for section, kind in sections().items():
        doc = _cell(kind.__doc__ or "").rstrip(".")
        title = f"**`{section}`**: {doc[0].lower()}{doc[1:]}"
        groups.append((title, kind, _section_names(section, kind), set()))
    out = [
        'A body names a parameter nested (`{"pretrain": {"epochs": 2}}`), dotted '
        '(`"pretrain.epochs"`, also in `--param`) or by its flat name (`"pretrain_epochs"`); '
        "`GET /jobs/{id}`, the lineage and the model card show them nested, every default "
        "filled in.",
    ]
    for title, model, name, skip in groups:
        out += ["", f"{title}:", "", *header, *_rows(model, name, skip)]
    return "\n".join(out) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "settings-table": lambda: fields_table(Settings, "variable", str.upper),
    "job-params-table": job_params_tables,
}
# The page each table lives in, from the checkout's root.
PAGES: dict[str, list[str]] = {
    "README.md": ["job-params-table"],
    "docs/configuration.md": ["settings-table"],
}


def with_generated_tables(markdown: str, names: list[str]) -> str:
    """`markdown` with the text between the markers of each of `names` replaced by the
    table."""
    for name in names:
        render = TABLES[name]
        start_marker, end_marker = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        start, end = markdown.find(start_marker), markdown.find(end_marker)
        if start < 0 or end < start:
            raise ValueError(f"no {start_marker} ... {end_marker} block")
        start += len(start_marker)
        markdown = markdown[:start] + "\n" + render() + markdown[end:]
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.cli.docs_tables", description=__doc__)
    parser.add_argument(
        "--write-readme",
        nargs="?",
        const=".",
        metavar="ROOT",
        help="replace every generated table in its page under ROOT (the checkout: README.md "
        "and docs/configuration.md)",
    )
    args = parser.parse_args(argv)
    if args.write_readme is None:
        for render in TABLES.values():
            print(render())
        return
    for page, names in PAGES.items():
        path = Path(args.write_readme) / page
        path.write_text(with_generated_tables(path.read_text(), names))
        print(f"Wrote {', '.join(names)} into {path}.")


if __name__ == "__main__":
    main()
