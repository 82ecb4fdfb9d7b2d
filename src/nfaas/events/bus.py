"""The platform's connection to NATS and the streams it relies on.

One client connection, reconnecting forever: when nats-server restarts (or is killed and
restarted by the supervisor), publishes wait in the client's buffer and consumers resume where
their acknowledgements left off, because JetStream keeps both on disk.
"""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from nfaas.events import names
from nfaas.events.natsserver import PLATFORM_INBOX

log = logging.getLogger("nfaas.bus")
DAY = 24 * 3600.0


def platform_streams() -> list[StreamConfig]:
    return [
        StreamConfig(
            name=names.CALLS_STREAM,
            subjects=["nfaas.calls.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=600.0,  # a re-sent accept (same call id) within 10 min is one call
            max_bytes=8 * 1024**3,
            discard=DiscardPolicy.NEW,  # full: refuse new calls (503), never drop accepted ones
        ),
        StreamConfig(
            name=names.DEAD_STREAM,
            subjects=["nfaas.dead.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=14 * DAY,
            max_bytes=2 * 1024**3,
            duplicate_window=600.0,
        ),
        StreamConfig(
            name=names.CALLBACKS_STREAM,
            subjects=["nfaas.callbacks.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=600.0,
            max_bytes=2 * 1024**3,
        ),
    ]


class Bus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.nc: Client | None = None
        self.connected = asyncio.Event()
        self._kv: KeyValue | None = None
        self._closing = False

    @property
    def js(self) -> JetStreamContext:
        assert self.nc is not None, "bus not connected"
        return self.nc.jetstream(timeout=10.0)

    @property
    def calls_kv(self) -> KeyValue:
        assert self._kv is not None, "bus not connected"
        return self._kv

    async def connect(self) -> None:
        self.nc = await nats.connect(
            self.url,
            name="nfaas",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=5,
            pending_size=64 * 1024 * 1024,
            inbox_prefix=PLATFORM_INBOX,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )
        self.connected.set()
        await self.ensure_streams()

    async def ensure_streams(self) -> None:
        js = self.js
        for config in platform_streams():
            await ensure_stream(js, config)
        self._kv = await _calls_bucket(js)

    async def _disconnected(self) -> None:
        self.connected.clear()
        if not self._closing:
            log.warning("lost the connection to nats-server; reconnecting")

    async def _reconnected(self) -> None:
        self.connected.set()
        log.warning("reconnected to nats-server")

    async def _error(self, exc: Exception) -> None:
        log.debug("nats client: %s", exc)

    async def close(self) -> None:
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    def info(self) -> dict[str, object]:
        nc = self.nc
        return {
            "url": _without_credentials(self.url),
            "connected": bool(nc and nc.is_connected),
            "reconnects": nc.stats["reconnects"] if nc else 0,
        }


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one's settings up to date."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    try:
        await js.update_stream(config)
    except BadRequestError as exc:
        log.warning("stream %s kept its old settings: %s", config.name, exc.description)


async def _calls_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(names.CALLS_BUCKET)
    except Exception:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=names.CALLS_BUCKET,
                history=1,
                ttl=7 * DAY,
                storage=StorageType.FILE,
                max_bytes=2 * 1024**3,
            )
        )


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
