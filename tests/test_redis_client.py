"""The service's Redis client reads a large reply in large pieces, over TCP and a unix socket, against a
real Redis server."""

import asyncio
import os

import pytest
from redis._parsers.hiredis import _AsyncHiredisParser

from server.redis_client import READ_LIMIT, redis_client
from server.redis_server import EmbeddedRedis

VALUE = 4 << 20  # 4 MiB: 64 reads of redis-py's default 64 KiB at the least


def test_asyncio_stream_readers_keep_their_limit_where_we_raise_it():
    """The client sets ``StreamReader._limit``: if asyncio renamed it, the setting would do nothing."""

    async def default_limit() -> int:
        return asyncio.StreamReader()._limit  # made inside a loop: outside one it looks for a current loop

    assert asyncio.run(default_limit()) == 2**16


@pytest.fixture(params=["tcp", "unix"])
def url(request, clean_redis, tmp_path):
    if request.param == "tcp":
        yield clean_redis
        return
    server = EmbeddedRedis(tmp_path / "redis")
    yield server.start()
    server.stop()


def test_a_large_value_arrives_whole_in_a_few_large_reads(url, monkeypatch):
    reads = []
    original = _AsyncHiredisParser.read_from_socket

    async def counted(parser):
        reads.append(1)
        return await original(parser)

    monkeypatch.setattr(_AsyncHiredisParser, "read_from_socket", counted)
    value = os.urandom(VALUE)

    async def roundtrip() -> tuple[bytes, int]:
        client = redis_client(url, socket_timeout=5)
        try:
            await client.hset("big", mapping={"data": value})
            reads.clear()
            fields = await client.hgetall("big")
            connection = await client.connection_pool.get_connection()
            limit = connection._reader._limit
            await client.connection_pool.release(connection)
            return fields[b"data"], limit
        finally:
            await client.aclose()

    got, limit = asyncio.run(roundtrip())
    assert got == value
    assert limit == READ_LIMIT
    assert len(reads) < VALUE // 2**16, f"{len(reads)} reads for {VALUE} bytes"
