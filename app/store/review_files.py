"""The review queues in the formats annotation tools read: Label Studio's task JSON and a
plain CSV (`id,text,label`), out to be labeled and back in as answers.

Out: each Label Studio task carries the item's text, its id (in `data`, which every
Label Studio version keeps, and in `meta`) and the models' answers as predictions, so the
annotator sees what the models said. In: a Label Studio JSON export (the project's
Export > JSON) or the CSV with its `label` column filled; each task or row becomes an
`Answer` (app/store/review_answers.py), read back to its item by id, else by its text. A file that
cannot be read raises `ReviewFileError` naming the task or row; nothing is written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from app.core.texts import storable
from app.store.review_answers import Answer
from app.store.reviews import DISAGREEMENT
from app.store.tables import ReviewItem

# The names the labeling config gives its two tags; results are read back by them.
FROM_NAME = "label"
TO_NAME = "text"
ID_FIELD = "pfp_review_id"
CSV_COLUMNS = ("id", "text", "label")
MAX_ITEM_ID = 2**31 - 1


class ReviewFileError(ValueError):
    """A file of answers that cannot be read; the message names the task or row."""


@dataclass(frozen=True)
class Answers:
    answers: list[Answer]
    unanswered: int  # tasks without an annotation, rows with an empty label


# --- out ----------------------------------------------------------------------------------------


def labelstudio_config(classes: Sequence[str]) -> str:
    """The labeling config to paste into a Label Studio project (Settings > Labeling
    Interface > Code): the text and one choice per class."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f'  <Text name="{TO_NAME}" value="$text"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" '
        'showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def _prediction(label: str, model_version: str, score: float | None = None) -> dict[str, Any]:
    prediction: dict[str, Any] = {
        "model_version": model_version,
        "result": [
            {
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
    }
    if score is not None:
        prediction["score"] = score
    return prediction


def labelstudio_task(item: ReviewItem) -> dict[str, Any]:
    """One item as a Label Studio task to import (Project > Import, a JSON file)."""
    predictions = []
    if item.queue == DISAGREEMENT:
        if item.candidate_label is not None:
            version = f"v{item.candidate_version} (candidate)"
            predictions.append(_prediction(item.candidate_label, version))
        if item.champion_label is not None:
            version = f"v{item.champion_version} (champion)"
            predictions.append(_prediction(item.champion_label, version))
    elif item.predicted_label is not None:
        # Label Studio sorts tasks by prediction score: lowest first is most uncertain first.
        score = None if item.priority is None else round(1.0 - item.priority, 6)
        predictions.append(_prediction(item.predicted_label, f"v{item.model_version}", score))
    meta = {ID_FIELD: item.id, "queue": item.queue, "text_sha256": item.text_sha256}
    if item.job_id:
        meta["job_id"] = item.job_id
    return {
        "data": {"text": item.text, ID_FIELD: item.id, "pfp_queue": item.queue},
        "meta": meta,
        "predictions": predictions,
    }


def csv_text(items: Iterable[ReviewItem]) -> str:
    """`id,text,label`: the label empty where none was given yet."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    writer.writerows([item.id, item.text, item.label or ""] for item in items)
    return buffer.getvalue()


# --- in -----------------------------------------------------------------------------------------


def _item_id(value: Any, where: str, field: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError
        number = int(value)
        if not 1 <= number <= MAX_ITEM_ID:
            raise ValueError
    except ValueError:
        raise ReviewFileError(
            f"{where}: {field} must be a review item's id (a whole number from 1), not {value!r}"
        ) from None
    return number


def _text(value: Any, where: str, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ReviewFileError(f"{where}: {field} is not a string")
    try:
        return storable(value, field)
    except ValueError as exc:
        raise ReviewFileError(f"{where}: {exc}") from None


def _when(annotation: dict[str, Any]) -> datetime | None:
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def _newest(annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest annotation by its time; without times, the last in the list."""
    timed = [(_when(a), n, a) for n, a in enumerate(annotations)]
    if all(moment is not None for moment, _, _ in timed):
        return max(timed, key=lambda t: (t[0], t[1]))[2]
    return annotations[-1]


def _choice(annotation: dict[str, Any], where: str) -> str | None:
    """The class an annotation chose (None: it chose nothing)."""
    result = annotation.get("result") or []
    if not isinstance(result, list):
        raise ReviewFileError(f"{where}: the annotation's result is not a list")
    choices = [r for r in result if isinstance(r, dict) and r.get("type") == "choices"]
    ours = [r for r in choices if r.get("from_name") == FROM_NAME] or choices
    if not ours:
        return None
    if len(ours) > 1:
        raise ReviewFileError(
            f"{where}: the annotation has {len(ours)} choice results; the labeling config "
            f'has one, <Choices name="{FROM_NAME}">'
        )
    value = ours[0].get("value")
    picked = value.get("choices") if isinstance(value, dict) else None
    if not isinstance(picked, list) or not all(isinstance(c, str) for c in picked):
        raise ReviewFileError(f"{where}: the annotation's value.choices is not a list of classes")
    if len(picked) > 1:
        raise ReviewFileError(f"{where}: the annotation chose {len(picked)} classes, not one")
    return picked[0] if picked else None


def _annotator(annotation: dict[str, Any]) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # some exports give the user, not its id
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)[:200]


def read_labelstudio(tasks: Any) -> Answers:
    """Answers from a Label Studio JSON export: for each task, its newest annotation that
    was not cancelled; a task whose annotations were all cancelled (skipped in Label
    Studio) is a skip; a task without any, or whose annotation chose nothing, is left out."""
    if not isinstance(tasks, list):
        raise ReviewFileError(
            "expected a Label Studio JSON export: a list of tasks (Export > JSON)"
        )
    answers: list[Answer] = []
    unanswered = 0
    for n, task in enumerate(tasks, 1):
        where = f"task {n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ReviewFileError(f"{where}: a task is an object with a 'data' object")
        if task.get("id") is not None:
            where += f" (Label Studio id {task['id']})"
        data: dict[str, Any] = task["data"]
        meta = task["meta"] if isinstance(task.get("meta"), dict) else {}
        item_id = _item_id(data.get(ID_FIELD, meta.get(ID_FIELD)), where, f"data.{ID_FIELD}")
        text = _text(data.get("text"), where, "data.text")
        if item_id is None and text is None:
            raise ReviewFileError(f"{where}: neither data.{ID_FIELD} nor data.text to find it by")
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise ReviewFileError(f"{where}: 'annotations' is not a list of objects")
        submitted = [a for a in annotations if not a.get("was_cancelled")]
        if submitted:
            newest = _newest(submitted)
            label = _choice(newest, where)
            if label is None:
                unanswered += 1
                continue
            answers.append(Answer(where, item_id, text, label, _annotator(newest)))
        elif annotations:
            answers.append(Answer(where, item_id, text, None, _annotator(_newest(annotations))))
        else:
            unanswered += 1
    return Answers(answers, unanswered)


def read_csv(content: str) -> Answers:
    """Answers from a CSV with a header row naming `label` and `id` or `text` (other
    columns are ignored); rows whose label is empty are left out. Rows are counted from 1
    after the header."""
    # strict: an unclosed quote is an error, not a text that runs to the end of the file.
    reader = csv.DictReader(io.StringIO(content.removeprefix("\ufeff")), strict=True)
    try:
        columns = set(reader.fieldnames or ())
    except csv.Error as exc:
        raise ReviewFileError(f"line 1: not CSV ({exc})") from None
    if "label" not in columns or not columns & {"id", "text"}:
        raise ReviewFileError(
            "the CSV's header row must name 'label' and 'id' or 'text' (as exported: id,text,label)"
        )
    answers: list[Answer] = []
    unanswered = 0
    try:
        for n, row in enumerate(reader, 1):
            where = f"row {n}"
            if None in row:
                raise ReviewFileError(f"{where}: more cells than the header has columns")
            label = (row.get("label") or "").strip()
            if not label:
                unanswered += 1
                continue
            item_id = _item_id((row.get("id") or "").strip(), where, "the id")
            text = _text(row.get("text"), where, "the text")
            if item_id is None and text is None:
                raise ReviewFileError(f"{where}: neither an id nor a text to find it by")
            answers.append(Answer(where, item_id, text, label))
    except csv.Error as exc:
        raise ReviewFileError(f"line {reader.line_num}: not CSV ({exc})") from None
    return Answers(answers, unanswered)
