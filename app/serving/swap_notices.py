"""Redis pub/sub listener: wakes the model server as soon as a version is activated.

Polling the store stays on underneath, so a lost connection only delays a swap.
"""

from __future__ import annotations

import asyncio
import logging

from app.registry import SWAP_CHANNEL
from app.serving.model_server import ModelServer

log = logging.getLogger(__name__)


async def listen_for_swaps(redis_url: str, server: ModelServer) -> None:
    import redis.asyncio as aioredis

    delay = 1.0
    while True:
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(SWAP_CHANNEL)
                delay = 1.0
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        server.wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("swap notices unavailable (%s); polling only, retry in %.0fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        finally:
            await client.aclose()
