"""The layouts of exported pseudo-labels, shared by `GET /labels/export` and `pfp export`.

An exported row is the JSON object of `StoredPseudoLabel`. CSV flattens it into fixed
columns (the logits as a JSON list in one cell); Parquet keeps the types, with the logits
as a list column and `created_at` as a UTC timestamp. Both sides use these helpers, so a
CSV from the API and one converted by the CLI are byte for byte the same.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("id", "text", "label", "confidence", "model_version", "created_at", "logits")


def csv_row(item: dict[str, Any]) -> list[Any]:
    """One exported row as CSV cells, in COLUMNS order."""
    return [
        item["id"],
        item["text"],
        item["label"],
        item["confidence"],
        item["model_version"],
        item["created_at"],
        json.dumps(item["logits"]),
    ]


def csv_chunk(items: Iterable[dict[str, Any]], header: bool = False) -> str:
    """Rows (and the header row first if asked) as CSV text; the csv module quotes texts
    that hold commas, quotes or line breaks."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(COLUMNS)
    writer.writerows(csv_row(item) for item in items)
    return buffer.getvalue()


def exported_row(row: Sequence[Any]) -> dict[str, Any]:
    """A stored row, (id, text, label, confidence, logits, model_version, created_at) as
    `app.store.pseudo_labels.export_rows` reads it, as the JSON object of
    `StoredPseudoLabel` (times in UTC with `Z`). Built directly: validating millions of
    rows through the response model would be most of an export's time."""
    row_id, text, label, confidence, logits, model_version, created_at = row
    # SQLite hands times back without their zone; every row is stored in UTC.
    created = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at
    return {
        "id": row_id,
        "text": text,
        "label": label,
        "confidence": float(confidence),
        "logits": [float(x) for x in logits],
        "model_version": model_version,
        "created_at": created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


def parse_timestamp(value: str) -> datetime:
    """An exported `created_at` as an aware UTC datetime (SQLite hands back naive UTC)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parquet_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("text", pa.string()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("model_version", pa.int32()),
            ("created_at", pa.timestamp("us", tz="UTC")),
            ("logits", pa.list_(pa.float64())),
        ]
    )


def parquet_batch(items: list[dict[str, Any]]) -> pa.Table:
    """Exported rows as an Arrow table of `parquet_schema()` (one Parquet row group)."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [item[name] for item in items] for name in COLUMNS}
    columns["created_at"] = [parse_timestamp(value) for value in columns["created_at"]]
    return pa.Table.from_pydict(columns, schema=parquet_schema())
