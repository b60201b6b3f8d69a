"""Answering the callers of a shared batch, for the micro-batcher and the batched store
writer alike: the named thread a batch runs on, each caller's share of the outcome, and a
caller failed alone while the rest of its batch was answered."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.serving.telemetry import ISOLATED_FAILURES

log = logging.getLogger(__name__)

T = TypeVar("T")


_PR_SET_NAME = 15


def _name_native_thread(name: str) -> None:
    """Give the calling thread `name` in the OS (what `top -H`, `ps -L` and
    /proc/PID/task/TID/comm show, at most 15 bytes): Python's thread names stay inside
    Python, and every thread of an API process would otherwise read "python"."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the name is only a convenience
        pass


def named_thread(name: str, os_name: str) -> ThreadPoolExecutor:
    """One worker thread, called `name` in Python and `os_name` in the OS."""
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix=name,
        initializer=_name_native_thread,
        initargs=(os_name,),
    )


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


def failed_alone(
    where: str, request_id: str, error: BaseException, level: int = logging.WARNING
) -> None:
    """Count and log a request that failed by itself inside a shared batch (`where`: model
    or store) while the rest of the batch was answered: one line, with its request id."""
    ISOLATED_FAILURES.labels(where).inc()
    log.log(
        level,
        "request %s failed alone in its %s batch: %s",
        request_id,
        where,
        error,
        extra={"request_id": request_id},
    )
