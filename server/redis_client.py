"""The service's asyncio Redis client, with read buffers sized for adapters rather than small replies.

An adapter entry is about 1 MB (SmolLM2, r = 8, fp16). redis-py's asyncio connection reads through an
``asyncio.StreamReader`` whose default limit (64 KiB) pauses the socket whenever 128 KiB are buffered,
and its parser takes 64 KiB per read: a 4 MiB reply took 134 reads (each an event-loop turn and a copy of
what it took), here 20-32. The reader's limit is 4 MiB and a read takes up to 1 MiB. On a Redis hit's
``HGETALL`` of a 0.92 MB entry (throwaway probes, one process, both clients interleaved, uvloop):
1.15 -> 1.10 and 1.30 -> 1.19 ms p50 (1000 reads each), 1.26 -> 1.05 (400); small against the
machine's drift, which moves the server's read between 1.4 and 4.4 ms from one minute to the next.
"""

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

READ_LIMIT = 1 << 22  # bytes a connection's stream buffers before it stops reading the socket (/ 2)
READ_SIZE = 1 << 20  # bytes the parser takes from the stream at a time


class _RoomyReader:
    """Raise the stream reader's limit once connected. ``asyncio.open_connection`` takes ``limit``, but
    redis-py opens its streams itself (with the default), so the limit is set on the reader it made."""

    _reader: Any

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[misc]
        self._reader._limit = READ_LIMIT


class RoomyConnection(_RoomyReader, Connection):
    pass


class RoomyUnixConnection(_RoomyReader, UnixDomainSocketConnection):
    pass


class RoomySSLConnection(_RoomyReader, SSLConnection):
    pass


ROOMY = {
    Connection: RoomyConnection,
    UnixDomainSocketConnection: RoomyUnixConnection,
    SSLConnection: RoomySSLConnection,
}


def redis_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """A client for ``url`` (redis://, rediss:// or unix://) whose connections read large replies in
    few, large pieces; ``kwargs`` as for ``redis.asyncio.Redis.from_url``."""
    plain = parse_url(url).get("connection_class", Connection)
    pool = ConnectionPool.from_url(url, connection_class=ROOMY[plain], socket_read_size=READ_SIZE, **kwargs)
    return aioredis.Redis(connection_pool=pool)
