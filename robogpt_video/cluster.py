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
import json
import logging
import math
import os
import secrets
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
from .errors import StreamLimitReached
from .streams import Frame, Stream, StreamRegistry, iso

log = logging.getLogger(__name__)

#: The head of each frame on ``rv:frames:<name>``: the sequence of the frame among those
#: published to its node, timestamp, width, height, and the node's origin id (8 random
#: bytes per process: a node ignores its own frames and counts gaps per origin).
HEADER = struct.Struct("!QdII8s")
FRAMES = "rv:frames:"
STREAM = "rv:stream:"
STREAMS = "rv:streams"  # the set of live stream names: the cluster-wide count
CONTROL = "rv:control"
NODE_FIELD = "s:"  # rv:stream:<name> field s:<node>: that node's part of the stream (JSON)

#: Create a stream cluster-wide, atomically: prune names whose key expired (a node died
#: or the stream went quiet), then return the stream's home node if it exists, or
#: create it (home: this node) if fewer than the limit are live, or return nil.
#: KEYS: rv:streams, rv:stream:<name>; ARGV: node, limit, ttl, key prefix, created_at, name.
CLAIM = """
local live = 0
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[4] .. n) == 1 then live = live + 1
  else redis.call('SREM', KEYS[1], n) end
end
local home = redis.call('HGET', KEYS[2], 'node')
if home then
  redis.call('SADD', KEYS[1], ARGV[6])
  return home
end
if live >= tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[2], 'node', ARGV[1], 'created_at', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[1], ARGV[6])
return ARGV[1]
"""
#: The live members of a set, each with its hash: {name, fields...} for each name of
#: KEYS[1] whose key ARGV[1]..name exists (the others are dropped from the set). For
#: the live streams (rv:streams, rv:stream:) and the live nodes (rv:nodes, rv:node:).
LIST = """
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. n)
  if #fields == 0 then redis.call('SREM', KEYS[1], n)
  else table.insert(out, n); table.insert(out, fields) end
end
return out
"""
#: Recording leases (one recorder per stream): for each stream, KEYS rv:rec:<name> and
#: rv:recfence:<name>. A lease that is ours is extended; a free one is taken with a new
#: fencing token (INCR); one held by another node is left. ARGV: holder id, ttl in ms.
#: Returns, per stream, the fencing token if ours now, else the holder's id.
LEASE = """
local out = {}
for i = 1, #KEYS, 2 do
  local holder = redis.call('GET', KEYS[i])
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    table.insert(out, tonumber(redis.call('GET', KEYS[i + 1]) or 0))
  elseif holder then
    table.insert(out, holder)
  else
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    table.insert(out, redis.call('INCR', KEYS[i + 1]))
  end
end
return out
"""
#: Give a lease back if it is still ours. KEYS: rv:rec:<name>...; ARGV: holder id.
RELEASE = """
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
end
return 0
"""
NODES = "rv:nodes"
NODE_KEY = "rv:node:"
NODE_TTL = 5  # seconds a node stays listed after its last announcement
PEER_SECRET_KEY = "rv:peer-secret"  # signs node-to-node requests (web/peers.py)
#: The key of the dashboard's session tokens (auth.py), without auth.session_secret.
SESSION_SECRET_KEY = "rv:session-secret"
LEASE_KEY = "rv:rec:"
EXPIRE_KEY = "rv:expire:"  # the node ending an idle stream on every node (SET NX)
FENCE_KEY = "rv:recfence:"
LEASE_TTL = 1.5  # seconds a recording lease lasts unless renewed
LEASE_RENEW = 0.5  # the holder renews (and others try to take free leases) this often
#: The holder stops writing this long before its lease can expire for the other nodes:
#: the lease is reckoned from before the renewal was sent, so Redis' expiry is later.
LEASE_MARGIN = 0.3
ORPHAN_FRAMES = 64  # per stream: frames not known to reach a recorder, kept for a takeover
HOLDER, FOLLOWER, PENDING, LOCAL = "holder", "follower", "pending", "local"

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
                elif kind == b"subscribe":
                    self.cluster.acked(channel)
                continue
            if channel == b"rv:control":
                self.cluster.control(payload)
            elif channel in self.cluster.recording_channels:
                self.cluster.relay(channel, payload)  # every frame: it is recorded here
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
        self._joins = 0  # connections made to Redis so far
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
        self.max_streams = settings.streams.max_concurrent
        self.origin = os.urandom(8)  # this process in frame headers
        self.cluster_streams = 0  # live streams cluster-wide, as of the last announcement
        self.streams_timed_out = 0  # streams this node ended cluster-wide for inactivity
        self._published: dict[str, int] = {}  # frames published here, per local stream
        self._homes: dict[str, str] = {}  # local stream -> the node that created it
        self._cofed: set[str] = set()  # local streams other nodes are published to as well
        self._origins: dict[str, dict[bytes, int]] = {}  # stream -> origin -> last sequence
        self._expiring: set[str] = set()
        self._claim = None
        self._claims: dict[str, asyncio.Future] = {}  # stream -> its claim under way
        self.claims = 0  # streams claimed in Redis by this node (one claim per new stream)
        self._list = None
        self._subscribed: set[str] = set()  # local streams subscribed to (published elsewhere too)
        # One recorder per stream (docs/cluster.md): the recorder is fed through here.
        self.recorder = None
        self.lease_id = f"{self.node_name}/{self.origin.hex()}"
        self._rec: dict[str, str] = {}  # local stream -> HOLDER, FOLLOWER, PENDING or LOCAL
        self._fences: dict[str, int] = {}  # stream -> fencing token of the lease we hold
        self._orphans: dict[str, deque] = {}  # stream -> (seq, frame, sent) not yet recorded
        self._recsub: set[str] = set()  # streams subscribed to for the recording lease
        self._acks: set[bytes] = set()  # channels the current subscriber confirmed
        self._acked = asyncio.Event()
        self._lease_now = asyncio.Event()
        self.recording_channels: set[bytes] = set()  # frames channels of streams held here
        self._lease_script = None
        self._release_script = None
        self.leases_lost = 0
        # Recordings on every node (web/peers.py): how other nodes reach this one, which
        # recordings directory it has, the secret that signs node-to-node requests.
        self.advertise_url = settings.cluster.advertise_url
        self.recording_directory = settings.recording.directory
        self.storage = ""
        self.peer_secret: bytes | None = None
        # Session tokens valid on every node: with access control on and no
        # auth.session_secret, the nodes share one through Redis (docs/security.md).
        self.shares_session_secret = (settings.auth.enabled
                                      and settings.auth.session_secret is None)
        self.session_secret: bytes | None = None

    def set_address(self, host: str, port: int, url: str = "") -> None:
        """The address the server bound: the default node name becomes host:port, the
        default ``advertise_url`` ``url`` (the server's URL, see server.py)."""
        if not self.settings.node_name:
            self.node_name = f"{socket.gethostname()}:{port}"
        self.lease_id = f"{self.node_name}/{self.origin.hex()}"
        if not self.settings.advertise_url:
            self.advertise_url = url

    # -- service ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.mirrors.start()
        self._tasks = [
            asyncio.create_task(self._connect_forever(), name="cluster-link"),
            asyncio.create_task(self._publish_forever(), name="cluster-publish"),
            asyncio.create_task(self._announce_forever(), name="cluster-announce"),
            asyncio.create_task(self._sweep_forever(), name="cluster-mirrors"),
        ]
        if self.recorder is not None:
            self._tasks.append(asyncio.create_task(self._lease_forever(), name="cluster-leases"))

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        # The recorder has stopped (services stop in reverse): give the leases back, so
        # another node takes over at once rather than after LEASE_TTL.
        await self._release([name for name, state in self._rec.items() if state == HOLDER])
        await self._leave()
        await self.mirrors.stop()
        self._drop_subscriber()
        if self._client is not None:
            await self._client.aclose()

    async def end_viewers(self, reason: str) -> None:
        """End the mirrors' viewers at shutdown (the registry ends its own)."""
        await self.mirrors.end_viewers(reason)

    def problems(self) -> list[str]:
        """Why /health is degraded because of us: Redis is unreachable."""
        if self.connected:
            return []
        found = [f"cluster: {self.problem}"]
        if self.recorder is not None:
            found.append("recording: Redis unreachable: each node records the frames "
                         "published to it (no lease)")
        return found

    # -- one namespace: creation, listing, deletion, inactivity ------------------------------

    async def admit(self, name: str) -> None:
        """Before this node creates ``name``: claim it cluster-wide, or raise at the limit.

        One Redis call per stream creation (never per frame): the first frames of a new
        stream that arrive together (a load balancer spreading one camera's POSTs over
        several connections) wait for one claim instead of each making its own. While
        Redis is unreachable only this node's own limit applies.
        """
        if not self.connected or self._client is None or self._claim is None:
            return
        claim = self._claims.get(name)
        if claim is None:
            self.claims += 1
            claim = self._claims[name] = asyncio.ensure_future(self._claim_stream(name))
            claim.add_done_callback(lambda done: self._claim_done(name, done))
        await asyncio.shield(claim)  # one waiter leaving does not cancel the others' claim

    def _claim_done(self, name: str, claim: asyncio.Future) -> None:
        # A granted claim stays until the stream is created here (stream_opened), so a
        # frame arriving in between does not claim again; a refused one goes now. (If
        # every waiter left first, the stream's next first frame reuses the grant.)
        if claim.cancelled() or claim.exception() is not None:
            if self._claims.get(name) is claim:
                del self._claims[name]

    async def _claim_stream(self, name: str) -> None:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                home = await self._claim(
                    keys=[STREAMS, STREAM + name],
                    args=[self.node_name, self.max_streams, self._ttl(), STREAM,
                          repr(time.time()), name],
                )
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            log.warning("claiming stream %s in Redis failed (only this node's limit applies): %s",
                        name, exc)
            return
        if home is None:
            raise StreamLimitReached(
                f"cannot create stream '{name}': {self.max_streams} streams are live in the "
                f"cluster (streams.max_concurrent = {self.max_streams})"
            )
        home = home.decode(errors="replace")
        self._homes[name] = home
        if home != self.node_name:  # published to another node as well
            self._cofed.add(name)
            self._send_control(b"feed:" + name.encode())

    async def _hashes(self, script, key: str, prefix: str, what: str) -> dict | None:
        """A listing script's answer (every member of the set ``key`` with the hash at
        ``prefix`` + member, flattened) as {member: {field: bytes}}; ``None`` while Redis
        cannot say."""
        if not self.connected or script is None:
            return None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                reply = await script(keys=[key], args=[prefix])
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            log.warning("listing %s in Redis failed: %s", what, exc)
            return None
        out = {}
        for i in range(0, len(reply) - 1, 2):
            flat = reply[i + 1]
            out[reply[i].decode(errors="replace")] = {
                flat[j].decode(): flat[j + 1] for j in range(0, len(flat) - 1, 2)}
        return out

    async def list_streams(self) -> list[dict] | None:
        """Every live stream of the cluster (summaries), or ``None`` if Redis cannot say."""
        hashes = await self._hashes(self._list, STREAMS, STREAM, "streams")
        if hashes is None:
            return None
        out = {name: self._merged(name, fields) for name, fields in hashes.items()}
        for stream in self.registry:  # announced at most a second ago: add what is missing
            if stream.name not in out:
                out[stream.name] = self._merged(stream.name, {})
        return list(out.values())

    async def stream_stats(self, name: str) -> dict | None:
        """The cluster-wide statistics of ``name``; ``None`` if no node has it."""
        if not self.connected or self._client is None:
            return None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                raw = await self._client.hgetall(STREAM + name)
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            log.warning("reading stream %s from Redis failed: %s", name, exc)
            return None
        if not raw and self.registry.get(name) is None:
            return None
        return self._merged(name, {k.decode(): v for k, v in raw.items()}, stats=True)

    def _merged(self, name: str, fields: dict[str, bytes], stats: bool = False) -> dict:
        """One stream's summary from every node's part (``s:<node>``), this node's live."""
        parts = {}
        for key, value in fields.items():
            if key.startswith(NODE_FIELD):
                try:
                    parts[key[len(NODE_FIELD):]] = json.loads(value)
                except ValueError:
                    continue
        local = self.registry.get(name)
        if local is not None:
            parts[self.node_name] = self._part(local)
        now = time.time()
        try:
            created = float(fields.get("created_at", b"") or now)
        except ValueError:
            created = now
        if local is not None:
            created = min(created, local.created_at)
        newest = max(parts.values(), key=lambda p: p.get("t") or 0, default={})
        last = newest.get("t")
        home = fields.get("node", b"").decode(errors="replace") or self._homes.get(name)
        summary = {
            "name": name,
            "created_at": iso(created),
            "uptime_seconds": round(now - created, 3),
            "total_frames": sum(p.get("frames", 0) for p in parts.values()),
            "viewer_count": sum(p.get("viewers", 0) for p in parts.values()),
            "inactive_seconds": round(max(0.0, now - (last or created)), 3),
            "fps": round(sum(p.get("fps", 0.0) for p in parts.values()), 2),
            "width": newest.get("w"),
            "height": newest.get("h"),
            "home": home,
            "nodes": sorted(parts),
            "is_recording": any(p.get("rec") for p in parts.values()),  # on some node
        }
        if not stats:
            return summary
        stats_out = local.stats() if local is not None else {
            "buffer_size": 0, "max_buffer_frames": self.registry.settings.max_buffer_frames,
            "frames_out": 0, "frames_pushed": 0, "frames_dropped_slow_viewers": 0,
        }
        return {
            **stats_out,
            **summary,
            "last_frame_time": iso(last),
            "has_current_frame": last is not None,
            "bytes_in": sum(p.get("bytes", 0) for p in parts.values()),
            "last_frame_size": newest.get("size"),
        }

    def _part(self, stream: Stream) -> dict:
        """This node's part of a stream, as announced in ``s:<node>``."""
        latest = stream.latest
        return {
            "frames": self._published.get(stream.name, 0),
            "bytes": stream.bytes_in,
            "viewers": stream.viewer_count(),
            "fps": round(stream.fps(), 2),
            "t": latest.timestamp if latest else None,
            "w": latest.width if latest else None,
            "h": latest.height if latest else None,
            "size": latest.size if latest else None,
            "rec": self._writing(stream.name),
        }

    def _writing(self, name: str) -> bool:
        """Whether this node writes a segment of ``name`` now (the REC mark)."""
        stats = self.recorder.stream_stats(name) if self.recorder is not None else None
        return bool(stats and stats.get("segment"))

    async def delete(self, name: str, reason: str) -> bool:
        """End ``name`` on every node (``DELETE /api/streams/<name>``); ``False`` if unknown."""
        found = self.registry.get(name) is not None or self.mirrors.get(name) is not None
        self._end(name, reason)
        if self.connected and self._client is not None:
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(STREAM + name)
            pipe.srem(STREAMS, name)
            pipe.publish(CONTROL, f"delete:{name} {reason}".encode())
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    deleted, _, _ = await pipe.execute()
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                log.warning("deleting stream %s in Redis failed: %s", name, exc)
            else:
                found = found or bool(deleted)
        return found

    def _end(self, name: str, reason: str) -> None:
        self.registry.remove(name, reason)
        if self.mirrors.get(name) is not None:
            self._unsubscribe(name)
            self.mirrors.remove(name, reason)

    def may_expire(self, name: str) -> bool:
        """The cleanup sweep found ``name`` idle here: may it be removed now?

        With Redis reachable, no: it is ended on every node, once, by the node that
        takes its expiry lease when every node's part is idle (:meth:`_expire`), whether
        one node or several are published to it. Without Redis each node removes its
        own part.
        """
        if not self.connected:
            return True
        if name not in self._expiring:
            self._expiring.add(name)
            task = asyncio.create_task(self._expire(name))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
        return False

    async def _expire(self, name: str) -> None:
        """Every node's part of ``name`` idle: the node that takes ``rv:expire:<name>``
        (``SET NX``, for ``timeout_seconds``: a stream created anew cannot be idle that
        long before it lapses) ends it everywhere; the others leave it to that node.
        Not tied to the stream's home node, which may be gone or, after Redis lost its
        keys, be claimed by two nodes."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                raw = await self._client.hgetall(STREAM + name)
                fields = {k.decode(): v for k, v in raw.items()}
                merged = self._merged(name, fields)
                if merged["inactive_seconds"] < self.timeout:
                    return  # frames still come to another node
                won = await self._client.set(EXPIRE_KEY + name, self.lease_id, nx=True,
                                             ex=self._ttl())
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            log.warning("deciding whether stream %s timed out failed: %s", name, exc)
            return
        finally:
            self._expiring.discard(name)
        if not won:
            return  # another node ends it
        self.streams_timed_out += 1
        reason = f"inactive for {merged['inactive_seconds']:.1f} s on every node"
        log.info("stream %s timed out cluster-wide (decided by %s)", name, self.node_name)
        await self.delete(name, reason)

    # -- publishing (listener of the local registry) ----------------------------------------

    def stream_opened(self, stream: Stream) -> None:
        self._claims.pop(stream.name, None)
        self._published[stream.name] = 0
        self._announce_now.set()

    def frame_published(self, stream: Stream, frame: Frame) -> None:
        name = stream.name
        seq = self._published[name] = self._published.get(name, 0) + 1
        if name in self._watched:  # another node watches it: to Redis
            self._enqueue(name, seq, frame)
        if self.mirrors:  # viewers who came here before this node was published to
            mirror = self.mirrors.get(name)
            if mirror is not None:
                mirror.relay(frame.timestamp, frame.width, frame.height, frame.jpeg)
        if self.recorder is not None:
            self._record(stream, seq, frame)

    # -- one recorder per stream ---------------------------------------------------------------

    def _record(self, stream: Stream, seq: int, frame: Frame) -> None:
        """A frame published here: record it (we hold the lease, or Redis is down), or
        leave it to the holder, to whom it goes through Redis (``_watched``)."""
        name = stream.name
        state = self._rec.get(name)
        if state == HOLDER or state == LOCAL:
            self.recorder.frame_published(stream, frame)
            return
        if state is None:
            if not self.connected:
                self._rec[name] = LOCAL
                self.recorder.set_lease(name, None, math.inf)
                self.recorder.frame_published(stream, frame)
                return
            self._rec[name] = PENDING
            self._lease_now.set()
        if state == FOLLOWER and name in self._watched:
            return  # on its way to the holder
        # Not known to reach a recorder yet: kept for a takeover (or sent when the
        # holder is known).
        self._orphan(name, seq, frame, name in self._watched)

    def _orphan(self, name: str, seq: int, frame: Frame, sent: bool) -> None:
        kept = self._orphans.get(name)
        if kept is None:
            kept = self._orphans[name] = deque(maxlen=ORPHAN_FRAMES)
        kept.append((seq, frame, sent))

    def acked(self, channel: bytes) -> None:
        """Redis confirmed a SUBSCRIBE of ours."""
        self._acks.add(channel)
        self._acked.set()

    async def _lease_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(LEASE_RENEW):
                    await self._lease_now.wait()
            except TimeoutError:
                pass
            self._lease_now.clear()
            try:
                await self._lease_round()
            except Exception:  # never lose the task; the writer fences on its own
                log.exception("cluster: renewing recording leases failed")

    async def _lease_round(self) -> None:
        for name in [n for n in self._rec if self.registry.get(n) is None]:
            self._forget(name)
        names = sorted(self._rec)
        if not self.connected or self._client is None or self._lease_script is None:
            for name in names:  # Redis is down: every node records its own frames
                if self._rec[name] != LOCAL:
                    self._go_local(name)
            return
        # Subscribed before taking a lease: a node that learns who holds it forwards its
        # frames, and they must reach the holder.
        for name in names:
            if name not in self._recsub:
                self._recsub.add(name)
                if self._subscriber is not None:
                    self._subscriber.send("SUBSCRIBE", _frames_channel(name))
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                while not all(_frames_channel(n) in self._acks for n in names):
                    self._acked.clear()
                    await self._acked.wait()
        except TimeoutError:
            names = [n for n in names if _frames_channel(n) in self._acks]
        if not names:
            return
        keys = []
        for name in names:
            keys += [LEASE_KEY + name, FENCE_KEY + name]
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                replies = await self._lease_script(
                    keys=keys, args=[self.lease_id, int(LEASE_TTL * 1000)]
                )
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            self._lost(f"renewing recording leases failed: {exc or type(exc).__name__}")
            return  # the recorder stops writing at each lease's end on its own
        until = sent_at + LEASE_TTL - LEASE_MARGIN
        now = time.monotonic()
        for name, reply in zip(names, replies):
            if name not in self._rec:
                continue  # closed meanwhile
            if isinstance(reply, int):
                self._hold(name, reply, until)
            else:
                self._follow(name, reply.decode(errors="replace"), now)

    def _hold(self, name: str, fence: int, until: float) -> None:
        state = self._rec[name]
        self._fences[name] = fence
        self.recorder.set_lease(name, fence, until)
        if state == HOLDER:
            return
        self._rec[name] = HOLDER
        self.recording_channels.add(_frames_channel(name))
        log.info("recording stream %s here (lease, fence %d)", name, fence)
        stream = self.registry.get(name)
        kept = {seq: frame for seq, frame, _ in self._orphans.pop(name, ())}
        recent = time.monotonic() - 2 * LEASE_TTL
        for seq in sorted(kept):  # frames no recorder had, in the order they came
            if kept[seq].monotonic >= recent and stream is not None:
                self.recorder.frame_published(stream, kept[seq])

    def _follow(self, name: str, holder: str, now: float) -> None:
        state = self._rec[name]
        if state == HOLDER:
            self.leases_lost += 1
            log.warning("recording lease of stream %s lost to %s: closing its segment",
                        name, holder)
        if state in (HOLDER, LOCAL):
            self.recorder.revoke(name, f"recorded by {holder}")
        self.recording_channels.discard(_frames_channel(name))
        self._fences.pop(name, None)
        self._rec[name] = FOLLOWER
        self._watched[name] = now  # our frames go to the holder through Redis
        kept = self._orphans.get(name)
        if kept:  # not sent yet: to the holder now; sent to no one: kept for a takeover
            unsent = [(seq, frame) for seq, frame, sent in kept if not sent]
            self._orphans[name] = deque(((seq, frame, True) for seq, frame, sent in kept if sent),
                                        maxlen=ORPHAN_FRAMES)
            for seq, frame in unsent:
                self._enqueue(name, seq, frame)

    def _go_local(self, name: str) -> None:
        """Redis is unreachable: this node records the frames published to it."""
        if self._rec[name] == HOLDER:
            log.warning("stream %s: Redis unreachable; recording the frames published here",
                        name)
        self._rec[name] = LOCAL
        self.recording_channels.discard(_frames_channel(name))
        self._fences.pop(name, None)
        self.recorder.set_lease(name, None, math.inf)
        stream = self.registry.get(name)
        for _, frame, _ in self._orphans.pop(name, ()):
            if stream is not None:
                self.recorder.frame_published(stream, frame)

    def _forget(self, name: str) -> None:
        state = self._rec.pop(name, None)
        self._orphans.pop(name, None)
        self._fences.pop(name, None)
        self.recording_channels.discard(_frames_channel(name))
        if name in self._recsub:
            self._recsub.discard(name)
            self._acks.discard(_frames_channel(name))
            self._unsubscribe(name)
        if state == HOLDER:
            self._spawn(self._release([name]))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _release(self, names: list[str]) -> None:
        if not names or not self.connected or self._release_script is None:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._release_script(keys=[LEASE_KEY + n for n in names],
                                           args=[self.lease_id])
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            log.warning("giving back recording leases failed (they expire): %s", exc)

    def _enqueue(self, name: str, seq: int, frame: Frame) -> None:
        if not self.connected:
            self.frames_dropped += 1
            return
        if len(self._outbox) >= OUTBOX_FRAMES:
            self._outbox.popleft()
            self.frames_dropped += 1
        self._outbox.append((name, seq, frame))
        self._wake.set()

    def stream_closed(self, stream: Stream, reason: str) -> None:
        name = stream.name
        alone = name not in self._cofed
        # Only the last node a stream is published to deletes its key.
        self._closed_here.append((name, alone))
        for table in (self._published, self._homes, self._origins):
            table.pop(name, None)
        self._cofed.discard(name)
        if name in self._subscribed:
            self._subscribed.discard(name)
            self._unsubscribe(name)
        if self.recorder is not None:
            kept = self._orphans.get(name)
            if alone and kept and self._rec.get(name) == PENDING:
                # Closed (deleted, say) before the first lease round decided: no other
                # node is published to it, so no other recorder has these frames.
                # Recorded here, as without Redis.
                self.recorder.set_lease(name, None, math.inf)
                for _, frame, _ in kept:
                    self.recorder.frame_published(stream, frame)
            self.recorder.stream_closed(stream, reason)
            self._forget(name)
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
            for name, seq, frame in batch:
                head = HEADER.pack(seq, frame.timestamp, frame.width, frame.height, self.origin)
                pipe.publish(_frames_channel(name), head + frame.jpeg)
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    receivers = await pipe.execute()
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                self.frames_dropped += len(batch)
                self._lost(f"publishing to Redis failed: {exc or type(exc).__name__}")
                continue
            self.frames_published += len(batch)
            for (name, seq, frame), count in zip(batch, receivers):
                asked = self._watched.get(name)
                # Its own subscription (a stream published here and elsewhere) counts too.
                own = name in self._subscribed or name in self._recsub
                if count <= own and self._rec.get(name) in (FOLLOWER, PENDING):
                    self._orphan(name, seq, frame, True)  # no holder got it (it died?)
                if count <= own and asked is not None and asked < sent_at:
                    del self._watched[name]  # nobody listens any more

    def _ttl(self) -> int:
        return max(1, int(self.timeout))

    async def _announce_forever(self) -> None:
        announced: dict[str, float] = {}
        joins = self._joins
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
            if joins != self._joins:  # reconnected (Redis may have restarted empty)
                joins = self._joins
                announced.clear()
            pipe = self._client.pipeline(transaction=False)
            closed, self._closed_here = self._closed_here, []
            for name, last in closed:
                announced.pop(name, None)
                if self.registry.get(name) is not None:
                    continue  # created anew since
                if last:
                    pipe.delete(STREAM + name)
                    pipe.srem(STREAMS, name)
                    pipe.publish(CONTROL, b"closed:" + name.encode())
                else:
                    pipe.hdel(STREAM + name, NODE_FIELD + self.node_name)
            now = time.monotonic()
            for stream in self.registry:
                latest = stream.latest
                if latest is None or announced.get(stream.name, 0) > now - ANNOUNCE_SECONDS / 2:
                    continue
                if latest.monotonic <= announced.get(stream.name, -math.inf):
                    continue  # quiet since the last announcement: the key's TTL runs
                key = STREAM + stream.name
                pipe.hsetnx(key, "node", self.node_name)
                pipe.hset(key, mapping={
                    "advertise_url": self.advertise_url,
                    "last_frame_time": repr(latest.timestamp),
                    "width": latest.width, "height": latest.height,
                    NODE_FIELD + self.node_name: json.dumps(self._part(stream)),
                })
                pipe.expire(key, self._ttl())
                pipe.sadd(STREAMS, stream.name)
                announced[stream.name] = now
            self._announce_node(pipe)
            pipe.scard(STREAMS)
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    replies = await pipe.execute()
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                announced.clear()
                self._lost(f"announcing streams to Redis failed: {exc or type(exc).__name__}")
                continue
            self.cluster_streams = replies[-1]
            self.peer_secret = replies[-2]
            if self.shares_session_secret:
                self.session_secret = replies[-4] or None

    # -- the nodes: recordings on every node (web/peers.py) -----------------------------------

    def _announce_node(self, pipe) -> None:
        """Add to the announcement: this node in ``rv:nodes`` (its URL, its recordings
        directory, the files it writes), the session secret and the peer secret (each
        made by the first node); each secret's GET is the second reply after its SET."""
        if not self.storage:
            try:  # nodes that share a recordings directory (workers) share a storage id
                if self.recorder is not None:  # it is made at the first segment otherwise
                    os.makedirs(self.recording_directory, exist_ok=True)
                info = os.stat(self.recording_directory)
                self.storage = f"{socket.gethostname()}:{info.st_dev}:{info.st_ino}"
            except OSError:
                pass
        writing = []
        if self.recorder is not None:
            writing = sorted(f"{p.parent.name}/{p.name}" for p in self.recorder.open_paths())
        key = NODE_KEY + self.node_name
        pipe.hset(key, mapping={"url": self.advertise_url, "storage": self.storage,
                                "open": json.dumps(writing)})
        pipe.expire(key, NODE_TTL)
        pipe.sadd(NODES, self.node_name)
        if self.shares_session_secret:
            # Made by the first node, then everyone's; put back by the first node to
            # announce itself to a Redis restarted empty, so no one is signed out.
            known = self.session_secret or secrets.token_hex(32).encode()
            pipe.set(SESSION_SECRET_KEY, known, nx=True)
            pipe.get(SESSION_SECRET_KEY)
        pipe.set(PEER_SECRET_KEY, secrets.token_hex(32), nx=True)
        pipe.get(PEER_SECRET_KEY)

    async def nodes(self) -> dict[str, dict] | None:
        """Every live node but this one: name -> {url, storage, open: ["stream/file"]};
        ``None`` while Redis cannot say."""
        hashes = await self._hashes(self._list, NODES, NODE_KEY, "nodes")
        if hashes is None:
            return None
        out = {}
        for name, raw in hashes.items():
            fields = {key: value.decode(errors="replace") for key, value in raw.items()}
            if name == self.node_name:
                continue
            try:
                writing = json.loads(fields.get("open") or "[]")
            except ValueError:
                writing = []
            if not isinstance(writing, list):
                writing = []
            out[name] = {"url": fields.get("url", ""), "storage": fields.get("storage", ""),
                         "open": writing}
        return out

    async def _leave(self) -> None:
        """At shutdown: out of ``rv:nodes`` at once (peers stop asking this node)."""
        if not self.connected or self._client is None:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._client.delete(NODE_KEY + self.node_name)
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            log.warning("leaving rv:nodes failed (the entry expires): %s", exc)

    # -- receiving ---------------------------------------------------------------------------

    def control(self, payload: bytes) -> None:
        """A message on ``rv:control``: a node watches a stream, feeds it, or it ended."""
        kind, _, raw = payload.partition(b":")
        raw, _, why = raw.partition(b" ")
        name = raw.decode(errors="replace")
        if kind == b"watch":
            stream = self.registry.get(name)
            if stream is None:
                return
            self._watched[name] = time.monotonic()
            latest = stream.latest
            if latest is not None:  # the new watcher gets the current frame at once
                self._enqueue(name, self._published.get(name, 0), latest)
        elif kind == b"feed":  # another node is published to as well
            if self.registry.get(name) is not None:
                self._cofed.add(name)
        elif kind == b"delete":
            self._end(name, why.decode(errors="replace") or "deleted on another node")
        elif kind == b"closed":
            if self.mirrors.get(name) is not None:
                self._unsubscribe(name)
                self.mirrors.remove(name, "closed on its publishing node")

    def relay(self, channel: bytes, payload: bytes) -> None:
        """The newest frame of a read for a stream: hand it to this node's viewers."""
        if len(payload) <= HEADER.size:
            return
        name = channel[len(FRAMES):].decode(errors="replace")
        seq, timestamp, width, height, origin = HEADER.unpack_from(payload)
        if origin == self.origin:
            return  # our own frame (a stream published here and elsewhere)
        mirror = self.mirrors.get(name)
        target = mirror
        recording = self._rec.get(name) == HOLDER
        if target is None and (name in self._subscribed or recording):
            target = self.registry.get(name)
        if target is None:
            return
        seen = self._origins.setdefault(name, {})
        last = seen.get(origin)
        if last is not None:
            if seq == last:
                return  # the current frame again (sent to a new watcher)
            if seq < last and target is mirror and len(seen) == 1:
                # the stream was created anew on its only node
                log.info("mirror %s: the stream restarted on its node; its viewers end", name)
                self._unsubscribe(name)
                self.mirrors.remove(name, "restarted on its publishing node")
                return
            if seq > last:
                self.frames_lost += seq - last - 1
        seen[origin] = seq
        self.frames_received += 1
        frame = target.relay(timestamp, width, height, memoryview(payload)[HEADER.size:])
        if recording and target is not mirror:
            self.recorder.frame_published(target, frame)
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
        self._send_control(b"watch:" + name.encode())

    def _send_control(self, message: bytes) -> None:
        """PUBLISH ``message`` on ``rv:control`` from a task of its own."""
        if self._client is not None:
            task = asyncio.create_task(self._control_task(message))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _control_task(self, message: bytes) -> None:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._client.publish(CONTROL, message)
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            log.warning("sending %r through Redis failed: %s", message[:80], exc)

    def _unsubscribe(self, name: str) -> None:
        self._idle_since.pop(name, None)
        if name in self._recsub:
            return  # still wanted: the recording lease
        if self._subscriber is not None:
            self._subscriber.send("UNSUBSCRIBE", _frames_channel(name))

    async def _sweep_forever(self) -> None:
        """Drop mirrors that have had no viewer for ``MIRROR_GRACE_SECONDS``."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            # A local stream published to other nodes as well takes their frames while it
            # has viewers here.
            for name in list(self._cofed):
                stream = self.registry.get(name)
                if stream is None:
                    continue
                if stream.viewer_count():  # resized variants' viewers too
                    self._idle_since[name] = now
                    if name not in self._subscribed and self.connected:
                        self._subscribed.add(name)
                        self._subscribe(name)
                elif name in self._subscribed and (
                    now - self._idle_since.setdefault(name, now) > MIRROR_GRACE_SECONDS
                ):
                    self._subscribed.discard(name)
                    self._unsubscribe(name)
            for stream in self.mirrors:
                if stream.viewer_count():
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
            self._joins += 1
            self._announce_now.set()
            for name in [s.name for s in self.mirrors] + sorted(self._subscribed):
                self._ask(name)  # ask again for what this node's viewers watch
            await subscriber.lost
            if self._subscriber is subscriber:
                self._lost(f"Redis closed the connection ({self._shown_url()})")

    async def _connect(self) -> _Subscriber:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
            self._claim = self._client.register_script(CLAIM)
            self._list = self._client.register_script(LIST)
            self._lease_script = self._client.register_script(LEASE)
            self._release_script = self._client.register_script(RELEASE)
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
            names = [s.name for s in self.mirrors] + sorted(self._subscribed | self._recsub)
            self._acks.clear()
            channels = [CONTROL.encode()] + [_frames_channel(name) for name in names]
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
            ("streams_timed_out", "Streams this node ended on every node for inactivity",
             self.streams_timed_out),
            ("stream_claims", "New streams this node claimed in Redis (one claim per stream, "
             "however many of its first frames arrive together)", self.claims),
        ):
            yield CounterMetricFamily(f"{prefix}_{suffix}", text, value=value)
        yield GaugeMetricFamily(f"{prefix}_connected", "1 while Redis is reachable",
                                value=int(self.connected))
        yield GaugeMetricFamily(f"{prefix}_mirrors", "Remote streams this node mirrors",
                                value=len(self.mirrors))
        yield GaugeMetricFamily(f"{prefix}_streams", "Live streams on every node (Redis, ≤ 1 s old)",
                                value=self.cluster_streams)
