"""``StreamPublisher``: hand it frames from any thread; a background thread sends the newest.

The caller never waits on the network: ``publish_frame`` only puts the frame in a
one-frame slot (a newer frame replaces an unsent one, counted as dropped). The
sender thread holds ``max_fps``, encodes to JPEG, sends over one kept-alive
connection, and on connection errors retries with exponential back-off, so a
restarted server is picked up without help. Given several servers (cluster nodes), it
moves to the next one at once when the current one fails (docs/client.md).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator

from .errors import (
    ConfigurationError,
    EncodeError,
    NotRunning,
    PublishConnectionError,
    PublisherError,
    ServerError,
)
from .transports import TRANSPORTS

log = logging.getLogger(__name__)

# The server's rule for stream names (kept here so the client needs no server import).
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def encode_jpeg(frame, quality: int) -> bytes:
    """A BGR (or grayscale) numpy image as JPEG bytes, with OpenCV."""
    try:
        import cv2
    except ImportError:
        raise EncodeError(
            "publish_frame needs OpenCV: pip install 'robogpt-video[client]' "
            "(or send JPEG bytes with publish_jpeg)"
        ) from None
    try:
        ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    except cv2.error as exc:
        raise EncodeError(f"cannot encode frame: {exc}") from None
    if not ok:
        raise EncodeError("cannot encode frame: OpenCV returned no image")
    return buffer.tobytes()


def server_urls(server_url) -> list[str]:
    """One URL, several separated by commas, or a list of them: the servers to try, in order."""
    if isinstance(server_url, str):
        urls = server_url.split(",")
    elif isinstance(server_url, (list, tuple)) and all(isinstance(u, str) for u in server_url):
        urls = list(server_url)
    else:
        raise ConfigurationError(
            f"server_url must be a URL, URLs separated by commas, or a list of URLs: {server_url!r}"
        )
    urls = [url.strip().rstrip("/") for url in urls if url.strip()]
    if not urls:
        raise ConfigurationError("server_url names no server")
    return urls


def _check_arguments(server_url, stream_name, quality, max_fps, transport, verify) -> None:
    if not isinstance(stream_name, str) or not NAME_RE.fullmatch(stream_name):
        raise ConfigurationError(
            f"stream name {stream_name!r} is invalid: use 1-64 letters, digits, '_' or '-'"
        )
    if not 1 <= int(quality) <= 100:
        raise ConfigurationError(f"quality must be 1-100, not {quality}")
    if max_fps is not None and max_fps <= 0:
        raise ConfigurationError(f"max_fps must be positive (or None), not {max_fps}")
    if transport not in TRANSPORTS:
        raise ConfigurationError(f"transport must be one of {sorted(TRANSPORTS)}")
    for url in server_url:
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"server_url must start with http:// or https://: {url!r}")
    if not isinstance(verify, (bool, str, os.PathLike)):
        raise ConfigurationError(f"verify must be True, False or a CA bundle path, not {verify!r}")
    if not isinstance(verify, bool) and not os.path.exists(verify):
        raise ConfigurationError(f"verify: no CA bundle at {os.fspath(verify)!r}")


class StreamPublisher:
    """Publish frames to ``<server_url>/publish/<stream_name>`` from a background thread."""

    def __init__(
        self,
        server_url: str = "http://localhost:5000",
        stream_name: str = "webcam",
        quality: int = 85,
        max_fps: float | None = 30,
        *,
        transport: str = "http",
        timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        verify: bool | str | os.PathLike = True,
        token: str | None = None,
    ):
        #: Every server to publish to, in order: frames go to one at a time, and on a
        #: connection error or a 5xx/429 answer the next is tried (docs/client.md).
        self.server_urls = server_urls(server_url)
        _check_arguments(self.server_urls, stream_name, quality, max_fps, transport, verify)
        self._current = 0
        self.stream_name = stream_name
        self.quality = int(quality)
        self.max_fps = max_fps
        self.transport_name = transport
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # An https:// server's certificate is checked against requests' CA bundle (certifi)
        # or $REQUESTS_CA_BUNDLE (True), a CA bundle file or directory (a path), or not at
        # all (False).
        self.verify = verify if isinstance(verify, bool) else os.fspath(verify)
        # Sent as ``Authorization: Bearer``; kept out of stats, errors and logs.
        self._token = token or None
        self._cond = threading.Condition()
        self._slot: tuple[str, object] | None = None  # ("array" | "jpeg", frame)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport = None
        self._in_flight = False
        self._next_due = 0.0
        self._sent_times: deque[float] = deque(maxlen=512)
        self._counts = {"frames_sent": 0, "frames_dropped": 0, "errors": 0, "bytes_sent": 0,
                        "reconnects": 0}
        self._last_error: str | None = None
        self._connected = False
        self._first_sent = 0.0
        self._last_size = 0
        self._flush_done = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> StreamPublisher:
        """Start the sender thread (once)."""
        if self._thread is not None:
            raise PublisherError("publisher already started")
        self._transport = TRANSPORTS[self.transport_name](self.timeout, self.verify, self._token)
        self._thread = threading.Thread(
            target=self._run, name=f"publisher-{self.stream_name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Send the pending frame if any, then stop the thread and close the connection."""
        if self._thread is None or self._stopping.is_set():
            return
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
        self._thread.join(timeout)
        self._transport.close()  # unblocks a sender stuck on a dead socket
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("publisher thread for %s did not stop within %.1f s", self.stream_name, timeout)

    @property
    def server_url(self) -> str:
        """The server frames go to now (the first of ``server_urls`` until one fails)."""
        return self.server_urls[self._current]

    @property
    def url(self) -> str:
        """Where frames go now: ``<server_url>/publish/<stream_name>``."""
        return f"{self.server_url}/publish/{self.stream_name}"

    @property
    def running(self) -> bool:
        """Whether frames offered now will be sent."""
        return self._thread is not None and not self._stopping.is_set()

    def __enter__(self) -> StreamPublisher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- offering frames ----------------------------------------------------------------

    def publish_frame(self, frame) -> None:
        """Offer a BGR (OpenCV) numpy image; it is copied, encoded and sent in the background."""
        self._offer("array", frame.copy())

    def publish_jpeg(self, data: bytes) -> None:
        """Offer a ready-made JPEG; it is sent as is."""
        self._offer("jpeg", bytes(data))

    def _offer(self, kind: str, frame: object) -> None:
        if not self.running:
            raise NotRunning("call start() before publishing frames (or the publisher was stopped)")
        with self._cond:
            if self._slot is not None:
                self._counts["frames_dropped"] += 1  # newest frame wins
            self._slot = (kind, frame)
            self._cond.notify()

    # -- statistics ---------------------------------------------------------------------

    def stats(self) -> dict:
        """Frames sent and dropped, errors, current fps, bytes, reconnects, last error."""
        now = time.monotonic()
        with self._cond:
            recent = sum(1 for t in self._sent_times if now - t <= 2.0)
            counts = dict(self._counts)
        window = min(2.0, now - self._first_sent) if self._first_sent else 0.0
        fps = recent / window if recent >= 2 and window > 0 else 0.0
        return {
            **counts,
            "fps": round(fps, 2),
            "connected": self._connected,
            "last_error": self._last_error,
            "transport": self.transport_name,
            "server": self.server_url,
        }

    # -- the sender thread --------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff_initial
        sent_before = -1
        failed_in_a_row = 0  # servers that failed since the last frame delivered
        log.info("publisher %s: publishing to %s", self.stream_name, self.server_url)
        while not self._stopping.is_set():
            try:
                self._transport.run(self.url, self._frames())
                continue  # the frame generator ends only when stopping
            except ServerError as exc:
                retry, error = exc.retryable, exc
            except PublishConnectionError as exc:
                retry, error = True, exc
            except Exception as exc:  # never let the thread die silently
                log.exception("publisher %s: unexpected error", self.stream_name)
                retry, error = True, exc
            self._failed(error)
            if self._counts["frames_sent"] != sent_before:  # it worked for a while: start over
                delay = self.backoff_initial
                failed_in_a_row = 0
            sent_before = self._counts["frames_sent"]
            if not retry:
                continue
            self._counts["reconnects"] += 1
            failed_in_a_row += 1
            if len(self.server_urls) > 1:
                self._current = (self._current + 1) % len(self.server_urls)
                log.warning("publisher %s: switching to %s", self.stream_name, self.server_url)
                if failed_in_a_row < len(self.server_urls):
                    continue  # another server may answer now: no back-off before it
                failed_in_a_row = 0
            self._stopping.wait(delay)  # every server failed in turn
            delay = min(delay * 2, self.backoff_max)

    def _failed(self, exc: Exception) -> None:
        with self._cond:
            self._counts["errors"] += 1
            if self._in_flight:
                self._counts["frames_dropped"] += 1
            self._in_flight = False
            self._connected = False
            self._last_error = str(exc)
        log.warning("publisher %s: %s", self.stream_name, exc)

    def _frames(self) -> Iterator[bytes]:
        """The paced frame generator a transport consumes; resuming it means 'delivered'."""
        while True:
            if self._in_flight:
                self._delivered()
            item = self._take()
            if item is None:
                return
            jpeg = self._encode(item)
            if jpeg is None:
                continue
            self._in_flight = True
            self._last_size = len(jpeg)
            yield jpeg

    def _delivered(self) -> None:
        with self._cond:
            self._in_flight = False
            self._connected = True
            self._counts["frames_sent"] += 1
            self._counts["bytes_sent"] += self._last_size
            now = time.monotonic()
            self._sent_times.append(now)
            self._first_sent = self._first_sent or now

    def _take(self) -> tuple[str, object] | None:
        """Wait until a frame is due and there is one; ``None`` when stopping."""
        period = 1.0 / self.max_fps if self.max_fps else 0.0
        with self._cond:
            while True:
                if self._stopping.is_set():
                    # On stop the pending frame goes once; then the generator ends.
                    item, self._slot = self._slot, None
                    if self._flush_done:
                        return None
                    self._flush_done = True
                    return item
                wait = self._next_due - time.monotonic()
                if self._slot is not None and wait <= 0:
                    item, self._slot = self._slot, None
                    self._next_due = time.monotonic() + period
                    return item
                self._cond.wait(wait if self._slot is not None else None)

    def _encode(self, item: tuple[str, object]) -> bytes | None:
        kind, frame = item
        if kind == "jpeg":
            return frame
        try:
            return encode_jpeg(frame, self.quality)
        except EncodeError as exc:
            with self._cond:
                self._counts["errors"] += 1
                self._counts["frames_dropped"] += 1
                self._last_error = str(exc)
            log.warning("publisher %s: %s", self.stream_name, exc)
            return None
