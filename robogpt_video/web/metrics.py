"""``GET /metrics``: Prometheus text, read from the live objects at scrape time.

Per-stream counters already live on each :class:`~robogpt_video.streams.Stream`
(frames and bytes in, frames out and pushed, frames slow viewers never got), and the
per-path counters on :class:`Metrics` are plain integers, so a custom collector reads
them when Prometheus scrapes. Only the publish latency histogram and the rejection
counter are prometheus-client instruments updated on the request path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

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
from ..runtime import Runtime
from .mjpeg import FrameWires

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
    ("errors", "recording_errors", "Recording errors (failed opens, writes, closes)"),
)
RECORDER_GAUGES = (("queue_frames", "recording_queue_frames", "Frames waiting for the disk"),)


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
            ("stream_frames_pushed", "Frames publish wrote to idle viewers itself (fast path)",
             CounterMetricFamily, "frames_pushed"),
            ("stream_frames_dropped_slow_viewers", "Frames viewers never got (a full link)",
             CounterMetricFamily, "frames_dropped_slow_viewers"),
        )
        for suffix, text, family_type, attribute in per_stream:
            family = family_type(f"{PREFIX}_{suffix}", text, labels=["stream"])
            for stream in streams:
                family.add_metric([stream.name], getattr(stream, attribute))
            yield family
        viewers = GaugeMetricFamily(f"{PREFIX}_stream_viewers", "Open viewers", labels=["stream"])
        for stream in streams:
            viewers.add_metric([stream.name], len(stream.viewers))
        yield viewers
        yield from self._paths()
        yield from self._recorder()

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

    def _recorder(self) -> Iterator[Metric]:
        recorder = self.runtime.recorder
        if recorder is None:
            return
        yield _gauge("recording_queue_bytes", "JPEG bytes queued for the disk, all streams",
                     recorder.queue_bytes)
        yield _gauge("recording_queue_bytes_max", "recording.max_queue_mb in bytes",
                     recorder.max_queue_bytes)
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


class Metrics:
    """The app's Prometheus registry and the few instruments updated per request."""

    def __init__(self, runtime: Runtime):
        #: Frames published by each kind of ingest (plain ints: counted per frame).
        self.frames_in = {"post": 0, "mpjpeg": 0, "websocket": 0}
        #: Each stream's frame framed once for its MJPEG viewers, and the write counters.
        self.wires = FrameWires()
        self.access = None  # set by watch_access
        self.connections = None  # set by watch_connections
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
        """Report open and refused connections (``web/connections.py``)."""
        self.connections = limits

    def render(self) -> bytes:
        """The exposition text (reads /proc for process metrics: memory, no disk)."""
        return generate_latest(self.registry)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of this process."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def install(app, metrics: Metrics) -> Metrics:
    """Add ``GET /metrics`` for ``metrics``."""
    app.state.metrics = metrics
    app.router.routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    return metrics
