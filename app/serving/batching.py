"""What the micro-batcher and the batched store writer share: answering their callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def settle(
    futures: Sequence[asyncio.Future[list[T]]],
    sizes: Sequence[int],
    outcome: list[T] | BaseException,
) -> None:
    """Give each waiting caller its slice of a batch's results, in order, or the batch's
    error; callers that already gave up are skipped."""
    start = 0
    for future, size in zip(futures, sizes, strict=True):
        if not future.done():
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[start : start + size])
        start += size
