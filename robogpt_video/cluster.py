"""Nodes sharing streams through Redis (docs/cluster.md). Imported only with ``cluster.redis_url``.

A node that is published to keeps ``rv:stream:<name>`` (a hash: node, last frame time,
width, height; TTL ``streams.timeout_seconds``) so other nodes know the stream exists.
A node asked for a stream it does not have looks that key up, makes a *mirror* (a
:class:`~robogpt_video.streams.Stream` in a registry of its own: not recorded here, not
counted against ``streams.max_concurrent``), subscribes to ``rv:frames:<name>`` and
says ``watch:<name>`` on ``rv:control``. A publishing node sends a stream's frames to
Redis only while someone watches it: from a ``watch:`` message until a PUBLISH reaches
no subscriber. Frames are PUBLISHed by a background task, pipelined; the request path
only appends to a bounded queue, and while Redis is slow or down frames for it are
dropped and counted, never the local publish.

Receiving: ``hiredis.Reader`` fed from an asyncio protocol (bench/redis_bus.py: ≈20 µs
of CPU per 48 KB frame against ≈380-460 µs through redis-py's ``PubSub``). Of the
frames one read brings, only each stream's newest is handed to its mirror, so a node
that falls behind loses frames (counted as sequence gaps), not its subscription.
Publishing and the stream keys go through redis-py's asyncio client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Iterator

import hiredis
import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.connection import parse_url

from .aio import cancel_and_wait
from .config import Settings
from .streams import Frame, Stream, StreamRegistry

log = logging.getLogger(__name__)

#: The head of each frame on ``rv:frames:<name>``: sequence, timestamp, width, height.
HEADER = struct.Struct("!QdII")
FRAMES = "rv:frames:"
STREAM = "rv:stream:"
CONTROL = "rv:control"
OUTBOX_FRAMES = 64  # frames waiting for Redis (all streams); beyond it the oldest drop
MIRROR_GRACE_SECONDS = 5.0  # a mirror without viewers is dropped after this
FIRST_FRAME_SECONDS = 2.0  # /snapshot of a new mirror waits this long for a frame
ANNOUNCE_SECONDS = 1.0  # rv:stream:<name> keys are refreshed this often
REDIS_TIMEOUT = 2.0
BACKOFF_MAX = 2.0


def _frames_channel(name: str) -> bytes:
    return (FRAMES + name).encode()


class _Subscriber(asyncio.Protocol):
    """The node's pub/sub connection: ``hiredis.Reader`` parses what Redis sends."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, *args: bytes | str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(hiredis.pack_command(args))

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        newest: dict[bytes, bytes] = {}
        while (reply := reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(str(reply)))
                continue
            if not isinstance(reply, list) or len(reply) < 3:
                if not self.ready.done():  # +OK of AUTH
                    continue
                continue
            kind, channel, payload = reply[0], reply[1], reply[2]
            if kind != b"message":
                if kind == b"subscribe" and channel == CONTROL.encode() and not self.ready.done():
                    self.ready.set_result(None)
                continue
            if channel == b"rv:control":
                self.cluster.control(payload)
            else:
                if channel in newest:
                    self.cluster.frames_skipped += 1
                newest[channel] = payload
        for channel, payload in newest.items():
            self.cluster.relay(channel, payload)

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("Redis closed the connection"))


class Cluster:
    """A service and a stream listener: this node's link to the other nodes."""

    def __init__(self, settings: Settings, registry: StreamRegistry):
        self.settings = settings.cluster
        self.url = settings.cluster.redis_url
        self.registry = registry
        #: Remote-fed streams: not recorded by this node, outside its stream limit.
        self.mirrors = StreamRegistry(settings.streams)
        self.node_name = settings.cluster.node_name or (
            f"{socket.gethostname()}:{settings.server.port}"
        )
        self.timeout = settings.streams.timeout_seconds
        self.connected = False
        self.problem = "Redis not connected yet"
        # Counters (/metrics): frames to Redis, dropped before it, received, lost.
        self.frames_published = 0
        self.frames_dropped = 0
        self.frames_received = 0
        self.frames_lost = 0  # sequence gaps seen by mirrors (includes frames_skipped)
        self.frames_skipped = 0  # of a read's frames for a stream, all but the newest
        self._watched: dict[str, float] = {}  # stream -> when a node last asked for it
        self._outbox: deque[tuple[Stream, Frame]] = deque()
        self._wake = asyncio.Event()
        self._announce_now = asyncio.Event()
        self._closed_here: list[str] = []
        self._first_frame: dict[str, asyncio.Event] = {}
        self._idle_since: dict[str, float] = {}
        self._client: aioredis.Redis | None = None
        self._subscriber: _Subscriber | None = None
        self._tasks: list[asyncio.Task] = []

    def set_address(self, host: str, port: int) -> None:
        """The address the server bound: the default node name becomes host:port."""
        if not self.settings.node_name:
            self.node_name = f"{socket.gethostname()}:{port}"

    # -- service ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.mirrors.start()
        self._tasks = [
            asyncio.create_task(self._connect_forever(), name="cluster-link"),
            asyncio.create_task(self._publish_forever(), name="cluster-publish"),
            asyncio.create_task(self._announce_forever(), name="cluster-announce"),
            asyncio.create_task(self._sweep_forever(), name="cluster-mirrors"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        await self.mirrors.stop()
        self._drop_subscriber()
        if self._client is not None:
            await self._client.aclose()

    async def end_viewers(self, reason: str) -> None:
        """End the mirrors' viewers at shutdown (the registry ends its own)."""
        await self.mirrors.end_viewers(reason)

    def problems(self) -> list[str]:
        """Why /health is degraded because of us: Redis is unreachable."""
        return [] if self.connected else [f"cluster: {self.problem}"]

    # -- publishing (listener of the local registry) ----------------------------------------

    def stream_opened(self, stream: Stream) -> None:
        self._announce_now.set()

    def frame_published(self, stream: Stream, frame: Frame) -> None:
        if stream.name not in self._watched:
            return  # no other node watches it: nothing goes to Redis
        if not self.connected:
            self.frames_dropped += 1
            return
        if len(self._outbox) >= OUTBOX_FRAMES:
            self._outbox.popleft()
            self.frames_dropped += 1
        self._outbox.append((stream, frame))
        self._wake.set()

    def stream_closed(self, stream: Stream, reason: str) -> None:
        self._closed_here.append(stream.name)
        self._announce_now.set()

    async def _publish_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._outbox or self._client is None:
                continue
            batch = list(self._outbox)
            self._outbox.clear()
            sent_at = time.monotonic()
            pipe = self._client.pipeline(transaction=False)
            for stream, frame in batch:
                head = HEADER.pack(frame.seq, frame.timestamp, frame.width, frame.height)
                pipe.publish(_frames_channel(stream.name), head + frame.jpeg)
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    receivers = await pipe.execute()
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                self.frames_dropped += len(batch)
                self._lost(f"publishing to Redis failed: {exc or type(exc).__name__}")
                continue
            self.frames_published += len(batch)
            for (stream, _), count in zip(batch, receivers):
                asked = self._watched.get(stream.name)
                if count == 0 and asked is not None and asked < sent_at:
                    del self._watched[stream.name]  # nobody listens any more

    async def _announce_forever(self) -> None:
        announced: dict[str, float] = {}
        while True:
            try:
                async with asyncio.timeout(ANNOUNCE_SECONDS):
                    await self._announce_now.wait()
            except TimeoutError:
                pass
            self._announce_now.clear()
            if self._client is None or not self.connected:
                announced.clear()  # announce everything again once connected
                continue
            pipe = self._client.pipeline(transaction=False)
            closed, self._closed_here = self._closed_here, []
            for name in closed:
                announced.pop(name, None)
                if self.registry.get(name) is None:
                    pipe.delete(STREAM + name)
                    pipe.publish(CONTROL, b"closed:" + name.encode())
            now = time.monotonic()
            for stream in self.registry:
                latest = stream.latest
                if latest is None or announced.get(stream.name, 0) > now - ANNOUNCE_SECONDS / 2:
                    continue
                if stream.name in announced and now - latest.monotonic > ANNOUNCE_SECONDS:
                    continue  # quiet since the last announcement: the key's TTL runs
                key = STREAM + stream.name
                pipe.hset(key, mapping={
                    "node": self.node_name, "advertise_url": self.settings.advertise_url,
                    "last_frame_time": repr(latest.timestamp),
                    "width": latest.width, "height": latest.height,
                })
                pipe.expire(key, max(1, int(self.timeout)))
                announced[stream.name] = now
            if not len(pipe):
                continue
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    await pipe.execute()
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                announced.clear()
                self._lost(f"announcing streams to Redis failed: {exc or type(exc).__name__}")

    # -- receiving ---------------------------------------------------------------------------

    def control(self, payload: bytes) -> None:
        """A message on ``rv:control``: a node watches a stream, or a stream ended."""
        kind, _, raw = payload.partition(b":")
        name = raw.decode(errors="replace")
        if kind == b"watch":
            stream = self.registry.get(name)
            if stream is None:
                return
            self._watched[name] = time.monotonic()
            latest = stream.latest
            if latest is not None:  # the new watcher gets the current frame at once
                self.frame_published(stream, latest)
        elif kind == b"closed":
            if self.mirrors.get(name) is not None:
                self._unsubscribe(name)
                self.mirrors.remove(name, "closed on its publishing node")

    def relay(self, channel: bytes, payload: bytes) -> None:
        """The newest frame of a read for a mirror: hand it to the mirror's viewers."""
        name = channel[len(FRAMES):].decode(errors="replace")
        mirror = self.mirrors.get(name)
        if mirror is None or len(payload) <= HEADER.size:
            return
        seq, timestamp, width, height = HEADER.unpack_from(payload)
        latest = mirror.latest
        if latest is not None:
            if seq == latest.seq:
                return  # the current frame again (sent to a new watcher)
            if seq < latest.seq:  # the stream was created anew on its node
                log.info("mirror %s: the stream restarted on its node; its viewers end", name)
                self._unsubscribe(name)
                self.mirrors.remove(name, "restarted on its publishing node")
                return
            self.frames_lost += seq - latest.seq - 1
        self.frames_received += 1
        mirror.relay(seq, timestamp, width, height, memoryview(payload)[HEADER.size:])
        waiting = self._first_frame.pop(name, None)
        if waiting is not None:
            waiting.set()

    async def mirror(self, name: str, want_frame: bool = False) -> Stream | None:
        """A mirror of the stream ``name`` published on another node, or ``None``.

        With ``want_frame`` (a snapshot), wait up to ``FIRST_FRAME_SECONDS`` for its first
        frame. ``None`` when no node has the stream or Redis is unreachable.
        """
        stream = self.mirrors.get(name)
        if stream is None:
            if not self.connected or self._client is None:
                return None
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    known = await self._client.exists(STREAM + name)
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                log.warning("looking up stream %s in Redis failed: %s", name, exc)
                return None
            if not known:
                return None
            stream = self.mirrors.get(name)
            if stream is None:
                stream = self.mirrors.get_or_create(name)
                self._idle_since[name] = time.monotonic()
                self._subscribe(name)
        if want_frame and stream.latest is None:
            event = self._first_frame.setdefault(name, asyncio.Event())
            try:
                async with asyncio.timeout(FIRST_FRAME_SECONDS):
                    await event.wait()
            except TimeoutError:
                pass
        return stream

    def _subscribe(self, name: str) -> None:
        if self._subscriber is not None:
            self._subscriber.send("SUBSCRIBE", _frames_channel(name))
        self._ask(name)

    def _ask(self, name: str) -> None:
        if self._client is not None:
            task = asyncio.create_task(self._ask_for(name))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _ask_for(self, name: str) -> None:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._client.publish(CONTROL, b"watch:" + name.encode())
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            log.warning("asking for stream %s through Redis failed: %s", name, exc)

    def _unsubscribe(self, name: str) -> None:
        self._idle_since.pop(name, None)
        if self._subscriber is not None:
            self._subscriber.send("UNSUBSCRIBE", _frames_channel(name))

    async def _sweep_forever(self) -> None:
        """Drop mirrors that have had no viewer for ``MIRROR_GRACE_SECONDS``."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for stream in self.mirrors:
                if stream.viewers:
                    self._idle_since[stream.name] = now
                elif now - self._idle_since.setdefault(stream.name, now) > MIRROR_GRACE_SECONDS:
                    self._unsubscribe(stream.name)
                    self.mirrors.remove(stream.name, "no viewers on this node")

    # -- the link --------------------------------------------------------------------------

    def _lost(self, reason: str) -> None:
        if self.connected:
            log.warning("cluster: %s", reason)
        self.connected = False
        self.problem = reason
        self._drop_subscriber()

    def _drop_subscriber(self) -> None:
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None and subscriber.transport is not None:
            subscriber.transport.close()

    async def _connect_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                subscriber = await self._connect()
            except Exception as exc:  # whatever it is, the node serves on and retries
                if not isinstance(exc, (OSError, aioredis.RedisError, TimeoutError)):
                    log.exception("cluster: connecting to Redis failed")
                self.problem = f"Redis unreachable at {self._shown_url()}: {exc or type(exc).__name__}"
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = 0.1
            log.info("cluster: node %s joined through Redis at %s", self.node_name, self._shown_url())
            self.connected = True
            self.problem = ""
            self._announce_now.set()
            for stream in self.mirrors:  # ask again for what this node's viewers watch
                self._ask(stream.name)
            await subscriber.lost
            if self._subscriber is subscriber:
                self._lost(f"Redis closed the connection ({self._shown_url()})")

    async def _connect(self) -> _Subscriber:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
        async with asyncio.timeout(REDIS_TIMEOUT):
            await self._client.ping()
        options = parse_url(self.url)
        loop = asyncio.get_running_loop()
        factory = lambda: _Subscriber(self)  # noqa: E731
        async with asyncio.timeout(REDIS_TIMEOUT):
            if "path" in options:
                _, subscriber = await loop.create_unix_connection(factory, options["path"])
            else:
                tls = ssl.create_default_context() if self.url.startswith("rediss:") else None
                _, subscriber = await loop.create_connection(
                    factory, options.get("host", "localhost"), options.get("port", 6379), ssl=tls
                )
            if options.get("password"):
                user = options.get("username")
                auth = (user, options["password"]) if user else (options["password"],)
                subscriber.send("AUTH", *auth)
            channels = [CONTROL.encode()] + [_frames_channel(s.name) for s in self.mirrors]
            subscriber.send("SUBSCRIBE", *channels)
            try:
                await subscriber.ready
            except BaseException:
                subscriber.transport.close()
                raise
        self._subscriber = subscriber
        return subscriber

    def _shown_url(self) -> str:
        """The URL without its password."""
        options = parse_url(self.url)
        if options.get("path"):
            return f"unix://{options['path']}"
        return f"{self.url.split('://')[0]}://{options.get('host')}:{options.get('port', 6379)}"

    # -- metrics -----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The cluster's families for ``/metrics``."""
        prefix = "robogpt_video_cluster"
        for suffix, text, value in (
            ("frames_published", "Frames published to Redis for other nodes", self.frames_published),
            ("frames_dropped", "Frames for other nodes dropped before Redis (slow or down)",
             self.frames_dropped),
            ("frames_received", "Frames received from Redis for this node's viewers",
             self.frames_received),
            ("frames_lost", "Frames of watched remote streams never received (sequence gaps)",
             self.frames_lost),
        ):
            yield CounterMetricFamily(f"{prefix}_{suffix}", text, value=value)
        yield GaugeMetricFamily(f"{prefix}_connected", "1 while Redis is reachable",
                                value=int(self.connected))
        yield GaugeMetricFamily(f"{prefix}_mirrors", "Remote streams this node mirrors",
                                value=len(self.mirrors))
