"""Importing human-labeled (gold) examples."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ADMIN, SettingsDep, StoreDep
from app.api.errors import Invalid, TooLarge
from app.api.schemas import GoldImport, GoldImportResult
from app.store import gold, versions

router = APIRouter(tags=["gold"], dependencies=ADMIN)

MAX_GOLD_PER_REQUEST = 10_000


@router.post("/gold", response_model=GoldImportResult)
def import_gold(body: GoldImport, store: StoreDep, settings: SettingsDep) -> GoldImportResult:
    """Import gold examples; texts already stored are skipped, not overwritten."""
    if len(body.examples) > MAX_GOLD_PER_REQUEST:
        raise TooLarge(
            f"{len(body.examples)} examples in one request; the limit is {MAX_GOLD_PER_REQUEST}"
        )
    for i, example in enumerate(body.examples):
        if len(example.text) > settings.max_text_chars:
            raise TooLarge(
                f"examples[{i}].text has {len(example.text)} characters; "
                f"the limit is {settings.max_text_chars}"
            )
    with store.session() as session:
        active = versions.active_version(session)
        if active is not None:
            row = versions.get_version(session, active)
            known = list(row.labels) if row else []
            unknown = sorted({e.label for e in body.examples} - set(known))
            if unknown:
                raise Invalid(f"unknown labels {unknown}: the serving model's labels are {known}")
        items = [
            gold.GoldItem(e.text, e.label, e.split or gold.split_for(e.text)) for e in body.examples
        ]
        inserted, skipped = gold.import_gold(session, items, source="api")
        counts = gold.split_counts(session)
    return GoldImportResult(inserted=inserted, skipped_duplicates=skipped, split_counts=counts)
