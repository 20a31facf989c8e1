"""``GET /metrics``: Prometheus text, read from the live objects at scrape time.

Per-stream counters already live on each :class:`~robogpt_video.streams.Stream`
(frames and bytes in, frames and bytes out, frames pushed, frames slow viewers never
got), and the per-path counters on :class:`Metrics` are plain integers, so a custom
collector reads them when Prometheus scrapes. Only the publish latency histogram and
the rejection counter are prometheus-client instruments updated on the request path.
Each scrape also asks ``runtime.problems()`` (``/health``) and, in a worker thread,
``statvfs`` of the recordings directory. Names follow Prometheus' conventions: base
units as the suffix (``_seconds``, ``_bytes``), ``_total`` on counters (added by
prometheus-client), and labels only with bounded values (stream names, fixed codes).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..cleanup import disk
from ..runtime import Runtime
from ..variants import Variants
from .mjpeg import FrameWires

log = logging.getLogger(__name__)

PREFIX = "robogpt_video"
#: Publish handling time: reading the body, checking the JPEG, fan-out.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
#: Keys read from ``runtime.recorder.stats()`` per stream: (key, metric suffix, help).
RECORDER_COUNTERS = (
    ("bytes_written", "recording_bytes", "Bytes written to recording files"),
    ("frames_written", "recording_frames", "Frames written to recording files"),
    ("frames_dropped", "recording_frames_dropped", "Frames the disk queue dropped (oldest first)"),
    ("frames_skipped_fps", "recording_frames_skipped_fps", "Frames above recording.fps, not recorded"),
    ("frames_skipped_resolution", "recording_frames_skipped_resolution",
     "Frames of another size than the open segment's while the stream was over "
     "recording.max_segments_per_minute, not recorded"),
    ("errors", "recording_errors", "Recording errors (failed opens, writes, closes)"),
)
RECORDER_GAUGES = (("queue_frames", "recording_queue_frames", "Frames waiting for the disk"),)
#: The ``reason`` label of a ``/health`` problem: the code of the first pattern its text
#: starts with, ``other`` if none does. The texts hold numbers and names that change;
#: the codes are a fixed set, so each kind of problem is one series.
PROBLEM_REASONS = (
    (re.compile(r"recording paused: "), "recording_paused"),
    (re.compile(r"recording of stream '[^']*' failed: "), "recording_failed"),
    (re.compile(r"recording: no write completed "), "recording_stalled"),
    (re.compile(r"recording: \d+ frame\(s\) dropped "), "recorder_dropping"),
    (re.compile(r"disk space low: "), "disk_low"),
    (re.compile(r"cluster: "), "cluster_disconnected"),
    (re.compile(r"recording: Redis unreachable: "), "recording_without_lease"),
    (re.compile(r"memory: "), "frame_memory_over_budget"),
)
#: Seconds a scrape waits for ``statvfs`` of the recordings directory.
DISK_TIMEOUT = 2.0


def problem_reason(text: str) -> str:
    """The stable ``reason`` code of one of ``runtime.problems()``."""
    for pattern, code in PROBLEM_REASONS:
        if pattern.match(text):
            return code
    return "other"


class RuntimeCollector(Collector):
    """Reads streams, viewers and recorder counters from the runtime when scraped."""

    def __init__(self, runtime: Runtime, metrics: Metrics):
        self.runtime = runtime
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """One family per quantity, one sample per live stream."""
        registry = self.runtime.registry
        streams = list(registry)
        info = GaugeMetricFamily(f"{PREFIX}_info", "Build information", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield _gauge("streams", "Live streams", len(streams))
        yield _gauge("streams_max", "streams.max_concurrent", registry.settings.max_concurrent)
        per_stream = (
            ("stream_frames_in", "Frames published", CounterMetricFamily, "total_frames"),
            ("stream_bytes_in", "JPEG bytes published", CounterMetricFamily, "bytes_in"),
            ("stream_frames_out", "Frames written to viewers", CounterMetricFamily, "frames_out"),
            ("stream_bytes_out", "MJPEG part bytes written to viewers (boundary, part headers, "
             "JPEG; not HTTP chunk framing)", CounterMetricFamily, "bytes_out"),
            ("stream_frames_pushed", "Frames publish wrote to idle viewers itself (fast path)",
             CounterMetricFamily, "frames_pushed"),
            ("stream_frames_dropped_slow_viewers", "Frames viewers never got (a full link)",
             CounterMetricFamily, "frames_dropped_slow_viewers"),
            ("stream_frames_skipped_fps", "Frames viewers' ?fps= caps skipped",
             CounterMetricFamily, "frames_skipped_fps"),
            ("stream_variant_frames_encoded", "Frames resized and re-encoded for the stream's "
             "?width= variants (once per variant, whatever its viewers)",
             CounterMetricFamily, "variant_frames_encoded"),
            ("stream_variant_encode_seconds", "Worker-thread CPU seconds spent resizing and "
             "re-encoding the stream's frames for its variants",
             CounterMetricFamily, "variant_encode_seconds"),
            ("stream_variant_frames_skipped_busy", "Frames a variant skipped because its "
             "encoder was still busy with an older one",
             CounterMetricFamily, "variant_frames_skipped_busy"),
        )
        for suffix, text, family_type, attribute in per_stream:
            family = family_type(f"{PREFIX}_{suffix}", text, labels=["stream"])
            for stream in streams:
                family.add_metric([stream.name], stream.count(attribute))
            yield family
        viewers = GaugeMetricFamily(
            f"{PREFIX}_stream_viewers", "Open viewers (of its variants too)", labels=["stream"]
        )
        variants = GaugeMetricFamily(
            f"{PREFIX}_stream_variants",
            "Resized versions of the stream being produced (one per distinct width and "
            "quality its viewers asked for)",
            labels=["stream"],
        )
        for stream in streams:
            viewers.add_metric([stream.name], stream.viewer_count())
            variants.add_metric([stream.name], len(stream.variants))
        yield viewers
        yield variants
        age = GaugeMetricFamily(
            f"{PREFIX}_stream_frame_age_seconds",
            "Seconds since the stream's last frame (since it was created, before its first)",
            labels=["stream"],
        )
        now = time.monotonic()
        for stream in streams:
            latest = stream.latest
            seconds = now - latest.monotonic if latest is not None else stream.inactive_seconds()
            age.add_metric([stream.name], max(0.0, seconds))
        yield age
        yield from self._health()
        yield from self._paths()
        yield from self._memory()
        yield from self._recorder()
        if self.runtime.cluster is not None:
            yield from self.runtime.cluster.collect()

    def _health(self) -> Iterator[Metric]:
        problems = self.runtime.problems()
        yield _gauge("degraded", "1 while /health says degraded (why: robogpt_video_problem)",
                     1 if problems else 0)
        family = GaugeMetricFamily(
            f"{PREFIX}_problem",
            "Current /health problems by kind; no sample for a kind that has none",
            labels=["reason"],
        )
        for reason, count in sorted(Tally(map(problem_reason, problems)).items()):
            family.add_metric([reason], count)
        yield family

    def _paths(self) -> Iterator[Metric]:
        frames_in = CounterMetricFamily(
            f"{PREFIX}_frames_in", "Frames published, by ingest kind", labels=["via"]
        )
        for via, count in self.metrics.frames_in.items():
            frames_in.add_metric([via], count)
        yield frames_in
        writes = CounterMetricFamily(
            f"{PREFIX}_viewer_writes",
            "Frames written to MJPEG viewers, by how (sendfile: from a shared memfd)",
            labels=["method"],
        )
        counters = self.metrics.wires.counters
        writes.add_metric(["writev"], counters.writev)
        writes.add_metric(["sendfile"], counters.sendfile)
        yield writes
        sockets = CounterMetricFamily(
            f"{PREFIX}_viewer_sockets",
            "MJPEG viewer sockets, by whether TCP_NOTSENT_LOWAT could be set on them "
            "(off: a viewer on a slow link falls a send buffer behind)",
            labels=["notsent_lowat"],
        )
        sockets.add_metric(["on"], counters.lowat_on)
        sockets.add_metric(["off"], counters.lowat_off)
        yield sockets
        connections = self.metrics.connections
        timed_out = dict(self.metrics.timed_out)
        if connections is not None:
            yield _gauge("connections", "Open client connections", connections.open)
            refused = CounterMetricFamily(
                f"{PREFIX}_connections_refused",
                "Connections refused at a cap (server.max_connections, "
                "server.max_connections_per_address)",
                labels=["cap"],
            )
            for cap, count in connections.refused.items():
                refused.add_metric([cap], count)
            yield refused
            timed_out.update(connections.timed_out)
        family = CounterMetricFamily(
            f"{PREFIX}_connections_timed_out",
            "Connections ended by a timeout: header (server.header_timeout_seconds), body "
            "(server.body_timeout_seconds), keepalive (server.keepalive_timeout_seconds), "
            "idle (a long-lived ingest without a frame for streams.timeout_seconds)",
            labels=["timeout"],
        )
        for timeout, count in sorted(timed_out.items()):
            family.add_metric([timeout], count)
        yield family
        access = self.metrics.access
        if access is not None:
            yield CounterMetricFamily(
                f"{PREFIX}_auth_failures", "Requests whose credentials were not right",
                value=access.failed)
            yield CounterMetricFamily(
                f"{PREFIX}_requests_limited",
                "Requests refused because their address used up a per-minute budget "
                "(failed sign-ins, refused publishes)",
                value=access.limited)
            jwks = access.authenticator.jwt.jwks if access.authenticator.jwt else None
            if jwks is not None:
                yield CounterMetricFamily(
                    f"{PREFIX}_jwks_fetches", "Fetches of auth.jwt.jwks_url, successful or not",
                    value=jwks.fetches)
                yield CounterMetricFamily(
                    f"{PREFIX}_jwks_fetch_failures", "Fetches of auth.jwt.jwks_url that failed",
                    value=jwks.failures)

    def _memory(self) -> Iterator[Metric]:
        memory = self.runtime.memory
        held = GaugeMetricFamily(
            f"{PREFIX}_frame_memory_bytes",
            "JPEG bytes held, by where (counted against server.max_frame_memory_mb)",
            labels=["held"],
        )
        held.add_metric(["latest"], memory.latest)
        held.add_metric(["uploads"], memory.uploads)
        held.add_metric(["recorder"], memory.held() - memory.unqueued)
        yield held
        yield _gauge("frame_memory_max_bytes", "server.max_frame_memory_mb in bytes",
                     memory.budget)
        yield CounterMetricFamily(
            f"{PREFIX}_malloc_trims", "Times freed memory was handed back (malloc_trim)",
            value=memory.trims)

    def _recorder(self) -> Iterator[Metric]:
        recorder = self.runtime.recorder
        if recorder is None:
            return
        yield _gauge("recording_queue_bytes", "JPEG bytes queued for the disk, all streams",
                     recorder.queue_bytes)
        yield _gauge("recording_queue_max_bytes", "recording.max_queue_mb in bytes",
                     recorder.max_queue_bytes)
        usage = self.metrics.disk
        if usage is not None:
            yield _gauge("recordings_disk_free_bytes",
                         "Bytes the server may still use on the recordings directory's file "
                         "system (df's Avail; what recording.min_free_gb is checked against)",
                         usage[0])
            yield _gauge("recordings_disk_total_bytes",
                         "Size of the recordings directory's file system", usage[1])
        cleanup = self.runtime.cleanup
        if cleanup.recordings_bytes is not None:
            yield _gauge("recordings_bytes",
                         "Bytes of recordings (video and sidecars) when cleanup last listed "
                         "them, less what it deleted then", cleanup.recordings_bytes)
            yield _gauge("recordings_listed_timestamp_seconds",
                         "When cleanup last listed the recordings (Unix time)",
                         cleanup.recordings_listed_at)
        rows = _per_stream(recorder.stats())
        for specs, family_type in ((RECORDER_COUNTERS, CounterMetricFamily),
                                   (RECORDER_GAUGES, GaugeMetricFamily)):
            for key, suffix, text in specs:
                family = family_type(f"{PREFIX}_{suffix}", text, labels=["stream"])
                for name, row in rows:
                    if isinstance(row.get(key), (int, float)):
                        family.add_metric([name], row[key])
                yield family


def _gauge(suffix: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{suffix}", text, value=value)


def _per_stream(stats: Mapping) -> list[tuple[str, Mapping]]:
    """The recorder's ``{name: row}`` as (name, row) pairs."""
    return [(str(name), row) for name, row in stats.items() if isinstance(row, Mapping)]


class DiskProbe:
    """``(free, total)`` bytes of the recordings directory's file system, asked in a
    worker thread: statvfs waits as long as the file system does (a dead network
    mount). A scrape waits for it at most ``DISK_TIMEOUT`` and then goes without the
    disk gauges; while a call is still waiting no other is started."""

    def __init__(self, path: Path):
        self.path = path
        self._call: asyncio.Future | None = None

    async def read(self) -> tuple[int, int] | None:
        """The file system's numbers, or ``None`` if it did not answer in time or failed."""
        call = self._call
        if call is None or call.done():
            call = self._call = asyncio.ensure_future(asyncio.to_thread(self._usage))
        try:
            return await asyncio.wait_for(asyncio.shield(call), DISK_TIMEOUT)
        except TimeoutError:
            return None

    def _usage(self) -> tuple[int, int] | None:
        try:
            return disk.usage(self.path)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.path, exc)
            return None


class Metrics:
    """The app's Prometheus registry and the few instruments updated per request."""

    def __init__(self, runtime: Runtime):
        #: Frames published by each kind of ingest (plain ints: counted per frame).
        self.frames_in = {"post": 0, "mpjpeg": 0, "websocket": 0}
        #: Each stream's frame framed once for its MJPEG viewers, and the write counters.
        self.wires = FrameWires()
        #: The worker threads that resize frames for ``?width=`` viewers and snapshots.
        self.variants = Variants()
        #: Requests ended by a timeout of their body or of a long-lived ingest; the
        #: connection timeouts (header, keepalive) are counted by ``connections``.
        self.timed_out = {"body": 0, "idle": 0}
        self.access = None  # set by watch_access
        self.connections = None  # set by watch_connections
        recorder = runtime.recorder
        self.disk_probe = DiskProbe(recorder.store.root) if recorder is not None else None
        self.disk: tuple[int, int] | None = None  # what the probe said for the last scrape
        # A registry per app, not the global one.
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(RuntimeCollector(runtime, self))
        self.publish_seconds = Histogram(
            f"{PREFIX}_publish_seconds",
            "Time to handle one POST /publish (read, check, fan out)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publish_rejected = Counter(
            f"{PREFIX}_publish_rejected",
            "Publish requests refused, by error code",
            ["error"],
            registry=self.registry,
        )

    def watch_access(self, access) -> None:
        """Report the counters of access control (``web/access.py``)."""
        self.access = access

    def watch_connections(self, limits) -> None:
        """Report open, refused and timed-out connections (``web/connections.py``)."""
        self.connections = limits

    def render(self) -> bytes:
        """The exposition text, with the disk numbers :meth:`scrape` read last (reads
        /proc for process metrics)."""
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """Ask the recordings' file system (in a thread), then :meth:`render`."""
        self.disk = await self.disk_probe.read() if self.disk_probe is not None else None
        return self.render()


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of this process."""
    body = await request.app.state.metrics.scrape()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install(app, metrics: Metrics) -> Metrics:
    """Add ``GET /metrics`` for ``metrics``."""
    app.state.metrics = metrics
    app.router.routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    return metrics
