"""How frames travel: one HTTP request per frame, or one long-lived chunked POST.

Both keep a single connection open (a ``requests.Session`` with one pooled socket),
send ``Authorization: Bearer <token>`` when given a token,
verify an ``https://`` server's certificate as ``verify`` says (requests' ``verify``:
``True``, ``False`` or a CA bundle path), and consume an iterator of JPEG bytes until
it ends, raising
:class:`PublishConnectionError` or :class:`ServerError` when a frame cannot go.
The iterator is the publisher's pacing generator: when a transport asks it for the
next frame, the previous one has been delivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import requests

from .errors import PublishConnectionError, ServerError

BOUNDARY = "frame"
STREAM_CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"


def server_error(response: requests.Response) -> ServerError:
    """The server's JSON error (or whatever it said) as a :class:`ServerError`."""
    try:
        body = response.json()
        return ServerError(response.status_code, body["error"], body["message"])
    except (ValueError, KeyError, TypeError):
        return ServerError(response.status_code, "http_error", response.text[:200])


def _session(token: str | None) -> requests.Session:
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    # One keep-alive socket; retries are the publisher's job (with back-off).
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class HttpTransport:
    """``POST /publish/<name>`` with a raw ``image/jpeg`` body per frame, on a kept-alive socket."""

    def __init__(self, timeout: float, verify: bool | str, token: str | None = None):
        self.timeout = timeout
        self.verify = verify
        self.session = _session(token)

    def run(self, url: str, frames: Iterable[bytes]) -> None:
        """Send every frame to ``url``; return when the iterator ends."""
        for jpeg in frames:
            try:
                response = self.session.post(
                    url,
                    data=jpeg,
                    headers={"Content-Type": "image/jpeg"},
                    timeout=self.timeout,
                    verify=self.verify,
                )
            except requests.RequestException as exc:
                raise PublishConnectionError(f"POST {url} failed: {exc}") from exc
            if response.status_code != 200:
                raise server_error(response)

    def close(self) -> None:
        """Drop the connection."""
        self.session.close()


class StreamTransport:
    """One chunked ``POST /publish/<name>`` whose body is ``multipart/x-mixed-replace`` parts.

    Costs one part header per frame instead of a whole request and response; the
    server answers once, when the body ends or when it refuses a part.
    """

    def __init__(self, timeout: float, verify: bool | str, token: str | None = None):
        self.timeout = timeout
        self.verify = verify
        self.session = _session(token)

    @staticmethod
    def _parts(frames: Iterable[bytes]) -> Iterator[bytes]:
        for jpeg in frames:
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            yield b"".join((head.encode("ascii"), jpeg, b"\r\n"))

    def run(self, url: str, frames: Iterable[bytes]) -> None:
        """Stream every frame to ``url`` as one part; return when the iterator ends and the
        server agrees."""
        try:
            response = self.session.post(
                url,
                data=self._parts(frames),  # a generator: requests sends it chunked, as it comes
                headers={"Content-Type": STREAM_CONTENT_TYPE},
                timeout=self.timeout,
                verify=self.verify,
            )
        except requests.RequestException as exc:
            raise PublishConnectionError(f"streaming POST {url} failed: {exc}") from exc
        if response.status_code != 200:
            raise server_error(response)

    def close(self) -> None:
        """Drop the connection."""
        self.session.close()


TRANSPORTS = {"http": HttpTransport, "stream": StreamTransport}
