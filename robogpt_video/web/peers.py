"""Recordings on every node (docs/cluster.md "Recordings on every node").

With ``cluster.redis_url`` a node knows the others from ``rv:nodes`` (``Cluster.nodes``:
each one's ``advertise_url``, the id of its recordings directory and the files it is
writing). ``GET /api/recordings`` adds every other node's listing, asked over HTTP in
parallel; a download, ``HEAD``, ``DELETE`` or ``/play`` of a file this node does not
have is found on another node (a ``HEAD`` to each, in parallel) and **proxied**: the
answer streams through with its status and headers, nothing buffered.

Node-to-node requests carry :data:`PEER_HEADER`: ``<node> <unix time> <HMAC-SHA256>``
of the method, path and query under the secret every node reads from Redis. It marks the
request as proxied (it is answered from the node's own files, never passed on again)
and, with access control on, stands for the node: the node that took the user's request
has already checked the user's permissions (and filters the listing by them), so the
user's credentials are never forwarded.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlencode

import aiohttp
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..auth import Principal
from ..errors import ApiError, NotFound


PEER_HEADER = "X-Robogpt-Peer"
#: On a proxied answer: the node that has the file.
NODE_HEADER = "X-Recording-Node"
SKEW_SECONDS = 60  # a signed request is accepted this long after (or before) it was signed
LIST_TIMEOUT = aiohttp.ClientTimeout(total=3, sock_connect=1)
LOCATE_TIMEOUT = aiohttp.ClientTimeout(total=3, sock_connect=1)
#: A proxied body: connecting is quick or fails; /play waits between frames at their
#: recorded timing, so reading may pause, but not for a minute.
PROXY_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=60)
CHUNK = 64 * 1024
#: Request headers a proxied request passes on (Range and the conditional ones).
FORWARDED = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match",
             "If-Unmodified-Since", "Accept")
#: Answer headers a proxy must not copy (RFC 9110 7.6.1; the server sets its own).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authenticate", "proxy-authorization", "date",
                        "server"})


def _mac(secret: bytes, node: str, stamp: str, method: str, path: str,
         query: Mapping[str, str] | None) -> str:
    # The query as its sorted pairs: what the signer sent is what the receiver parsed.
    pairs = urlencode(sorted((query or {}).items()))
    text = f"{node}\n{stamp}\n{method.upper()}\n{path}\n{pairs}".encode()
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def peer_principal(node: str) -> Principal:
    """Who a signed node-to-node request is: recordings and clips only (web/access.py)."""
    return Principal(f"node {node}", (("playback", "*"), ("admin", "*")))


class Peers:
    """This node's HTTP link to the other nodes, for recordings and clips."""

    def __init__(self, cluster):
        self.cluster = cluster
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No cookies between nodes; environment proxies are not for node-to-node.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        return self._session

    async def close(self, app=None) -> None:
        if self._session is not None:
            await self._session.close()

    # -- the signature ---------------------------------------------------------------------

    def sign(self, method: str, path: str, query: Mapping[str, str] | None = None) -> dict[str, str]:
        """The header of a node-to-node request for ``method path?query`` (a signature
        of "-" before the secret is known)."""
        secret = self.cluster.peer_secret
        node = self.cluster.node_name.replace(" ", "_")
        stamp = str(int(time.time()))
        mac = _mac(secret, node, stamp, method, path, query) if secret else "-"
        return {PEER_HEADER: f"{node} {stamp} {mac}"}

    def verify(self, value: str, method: str, path: str,
               query: Mapping[str, str] | None = None) -> str | None:
        """The node that signed a request, or None if the signature is not right (for
        another method, path or query, or older than :data:`SKEW_SECONDS`)."""
        secret = self.cluster.peer_secret
        node, _, rest = value.strip().partition(" ")
        stamp, _, mac = rest.partition(" ")
        if not secret or not (stamp.isascii() and stamp.isdigit()) \
                or abs(time.time() - int(stamp)) > SKEW_SECONDS:
            return None
        expected = _mac(secret, node, stamp, method, path, query)
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        return node

    # -- the nodes ---------------------------------------------------------------------------

    async def others(self) -> tuple[dict[str, str] | None, set[str]]:
        """(node -> URL: one live node per recordings directory other than ours, or None
        while Redis cannot say; "stream/file" names other nodes sharing our directory
        are writing)."""
        nodes = await self.cluster.nodes()
        if nodes is None:
            return None, set()
        mine = self.cluster.storage
        asked: dict[str, str] = {}
        storages: set[str] = set()
        writing: set[str] = set()
        for name, info in sorted(nodes.items()):
            storage = info["storage"]
            if storage and storage == mine:  # the same files: ours already
                writing.update(f for f in info["open"] if isinstance(f, str))
                continue
            if not info["url"] or (storage and storage in storages):
                continue
            storages.add(storage)
            asked[name] = info["url"].rstrip("/")
        return asked, writing

    # -- the listing -----------------------------------------------------------------------

    async def listings(self, peers: Mapping[str, str], query: Mapping[str, str]):
        """Every peer's ``GET /api/recordings`` with ``query``, in parallel: (entries,
        nodes that answered, {node: why it is missing})."""
        names = list(peers)
        answers = await asyncio.gather(
            *(self._listing(peers[name], query) for name in names), return_exceptions=True
        )
        entries, answered, missing = [], [], {}
        for name, answer in zip(names, answers):
            if isinstance(answer, BaseException):
                missing[name] = _why(answer)
                continue
            answered.append(name)
            for entry in answer:
                if isinstance(entry, dict) and isinstance(entry.get("stream_name"), str) \
                        and isinstance(entry.get("file"), str):
                    entry.setdefault("node", name)
                    entries.append(entry)
        return entries, answered, missing

    async def _listing(self, url: str, query: Mapping[str, str]) -> list:
        path = "/api/recordings"
        async with self._client().get(
            url + path, params=dict(query), headers=self.sign("GET", path, query),
            timeout=LIST_TIMEOUT,
        ) as response:
            if response.status != 200:
                raise _Refused(response.status)
            body = await response.json()
        recordings = body.get("recordings") if isinstance(body, dict) else None
        if not isinstance(recordings, list):
            raise _Refused(response.status, "answered no list of recordings")
        return recordings

    # -- one file --------------------------------------------------------------------------

    async def locate(self, stream: str, file: str) -> tuple[str, str]:
        """The node (name, URL) that has ``stream/file``: a HEAD to every other node in
        parallel; the first that has it wins. Raises NotFound, or 503 if a node that did
        not answer may have it."""
        path = f"/api/recordings/{stream}/{file}"
        peers, _ = await self.others()
        name, _, missing = await self._first(peers or {}, lambda url: self._has(url, path))
        if name is not None:
            return name, peers[name]
        what = f"no recording '{file}' for stream '{stream}'"
        if missing:
            raise ApiError(f"{what} on the nodes that answered; not answering: {missing}",
                           code="node_unreachable", status_code=503)
        raise NotFound(f"{what} on any node" if peers else what)

    async def find_clip(self, cid: str) -> tuple[str, str, dict]:
        """The node (name, URL) that knows the clip job ``cid`` (making it, or made it),
        and the job: ``GET /api/clips/<cid>`` to every other node in parallel. Raises
        like :meth:`locate`."""
        path = f"/api/clips/{cid}"
        peers, _ = await self.others()
        name, job, missing = await self._first(peers or {}, lambda url: self._job(url, path))
        if name is not None:
            return name, peers[name], job
        if missing:
            raise ApiError(f"no clip '{cid}' on the nodes that answered; not answering: "
                           f"{missing}", code="node_unreachable", status_code=503)
        raise NotFound(f"no clip '{cid}'")

    async def _first(self, peers: Mapping[str, str], probe):
        """``probe(url)`` of every node in parallel: (the first node whose answer is not
        None, that answer, "") or (None, None, why the nodes that failed did)."""
        async def ask(name: str, url: str):
            try:
                return name, await probe(url), None
            except (aiohttp.ClientError, TimeoutError, ValueError, _Refused) as exc:
                return name, None, exc

        tasks = [asyncio.ensure_future(ask(name, url)) for name, url in peers.items()]
        missing = []
        try:
            for done in asyncio.as_completed(tasks):
                name, found, exc = await done
                if found is not None:
                    return name, found, ""
                if exc is not None:
                    missing.append(f"{name}: {_why(exc)}")
        finally:
            for task in tasks:
                task.cancel()
        return None, None, "; ".join(sorted(missing))

    async def _has(self, url: str, path: str) -> bool | None:
        async with self._client().head(
            url + path, headers=self.sign("HEAD", path), timeout=LOCATE_TIMEOUT
        ) as response:
            if response.status == 404:
                return None
            if response.status >= 400:
                raise _Refused(response.status)
            return True

    async def _job(self, url: str, path: str) -> dict | None:
        async with self._client().get(
            url + path, headers=self.sign("GET", path), timeout=LOCATE_TIMEOUT
        ) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise _Refused(response.status)
            job = await response.json()
        if not isinstance(job, dict) or not isinstance(job.get("stream"), str):
            raise _Refused(200, "answered no clip job")
        return job

    async def proxy(self, method: str, node: str, url: str, path: str,
                    headers: Mapping[str, str], query: Mapping[str, str] | None = None,
                    body: dict | None = None, what: str = "the recording") -> Response:
        """``method path?query`` (with ``body`` as JSON) answered by ``node``: its status,
        headers and body as they come. ``what``: what the node has, for the 503."""
        sent = {key: headers[key] for key in FORWARDED if key in headers}
        sent.update(self.sign(method, path, query))
        try:
            upstream = await self._client().request(
                method, url + path, params=dict(query or {}), headers=sent, json=body,
                timeout=PROXY_TIMEOUT, allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(f"node {node}, which has {what}, did not answer: {_why(exc)}",
                           code="node_unreachable", status_code=503) from None
        if upstream.status == 401:  # our signature, not the user's credentials (a new secret)
            upstream.release()
            raise ApiError(f"node {node}, which has the recording, refused this node's "
                           "signature", code="node_unreachable", status_code=503)
        return ProxiedResponse(upstream, node, head=method == "HEAD")


class ProxiedResponse(Response):
    """Another node's answer, streamed: each chunk is sent (and the client has taken
    it) before the next is read, so a slow client slows the node, nothing piles up."""

    def __init__(self, upstream: aiohttp.ClientResponse, node: str, head: bool):
        self.upstream = upstream
        self.head = head
        self.status_code = upstream.status
        self.background = None
        self.raw_headers = [
            (key.lower(), value) for key, value in upstream.raw_headers
            if key.decode("latin-1").lower() not in HOP_BY_HOP
        ] + [(NODE_HEADER.lower().encode(), node.encode("utf-8", "replace"))]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream = self.upstream
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if not self.head:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except BaseException:
            upstream.close()  # the client left, or the node did: drop the connection
            raise
        else:
            upstream.release()


class _Refused(Exception):
    def __init__(self, status: int, text: str = ""):
        super().__init__(text or f"answered {status}")


def _why(exc: BaseException) -> str:
    """Why a node did not answer, in words (no header, no secret)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"answered {exc.status}"
    if isinstance(exc, aiohttp.ContentTypeError):
        return "answered no JSON"
    return str(exc) or type(exc).__name__
