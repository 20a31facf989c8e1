"""``robogpt-video publish`` and ``client/examples/webcam_publisher.py``: camera → server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .errors import PublisherError

# The publisher and sources (requests, numpy, OpenCV) are imported by run(), so that
# building the ``robogpt-video`` parser costs nothing and needs no client extras.


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The brief's flags (``--server --stream --camera --quality --fps``) and a few more."""
    parser.add_argument(
        "--server", action="append", metavar="URL", default=argparse.SUPPRESS,
        help="server URL (default: http://localhost:5000); repeat it, or separate URLs with "
             "commas, to fail over to the next server when one fails (cluster nodes)",
    )
    # Read from the environment by run(), not as the default: --help shows defaults.
    parser.add_argument(
        "--token", default=argparse.SUPPRESS,
        help="access token, sent as 'Authorization: Bearer' (default: $ROBOGPT_TOKEN)",
    )
    parser.add_argument("--cafile",
                        help="CA bundle (PEM) to verify an https:// server with, e.g. a private "
                             "CA's; without it: certifi's bundle, or $REQUESTS_CA_BUNDLE")
    parser.add_argument("--stream", default="webcam", help="stream name")
    parser.add_argument(
        "--camera", default="0",
        help="camera index (0, 1, ...), a video file or URL, or 'test' for a moving pattern",
    )
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality 1-100")
    parser.add_argument("--fps", type=float, default=30, help="maximum frames per second sent")
    parser.add_argument("--transport", choices=["http", "stream"], default="http",
                        help="http: one POST per frame; stream: one long-lived chunked POST")
    parser.add_argument("--width", type=int, default=640, help="width of the test pattern")
    parser.add_argument("--height", type=int, default=480, help="height of the test pattern")
    parser.add_argument("--duration", type=float, default=0,
                        help="stop after this many seconds (0: until Ctrl-C)")
    return parser


def status_line(stream: str, stats: dict) -> str:
    """One line of live status: fps, frames, drops, errors, and the last error if any."""
    line = (f"{stream}: {stats['fps']:5.1f} fps | {stats['frames_sent']} frames sent | "
            f"{stats['frames_dropped']} dropped | {stats['errors']} errors")
    if stats["errors"] and stats["last_error"] and not stats["connected"]:
        line += f" | {stats['last_error'][:80]}"
    return line


class StatusPrinter:
    """Rewrites one status line on a terminal; prints a line a second otherwise."""

    def __init__(self, stream, out=sys.stdout):
        self.out = out
        self.tty = out.isatty()
        self.last = 0.0
        self.stream = stream

    def say(self, message: str) -> None:
        """A line of its own (on a terminal, above the status line)."""
        self.out.write(("\r\x1b[K" if self.tty else "") + message + "\n")
        self.out.flush()

    def update(self, stats: dict, force: bool = False) -> None:
        """Show ``stats`` if enough time passed since the last update."""
        now = time.monotonic()
        if not force and now - self.last < (0.25 if self.tty else 1.0):
            return
        self.last = now
        line = status_line(self.stream, stats)
        if self.tty:
            self.out.write("\r\x1b[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()


def run(args: argparse.Namespace) -> int:
    """Publish frames from ``args.camera`` until Ctrl-C or ``--duration``; returns an exit code."""
    from .publisher import StreamPublisher
    from .sources import open_source

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    printer = StatusPrinter(args.stream)
    try:
        servers = ",".join(getattr(args, "server", None) or ["http://localhost:5000"])
        token = getattr(args, "token", None) or os.environ.get("ROBOGPT_TOKEN") or None
        publisher = StreamPublisher(servers, args.stream, args.quality, args.fps,
                                    transport=args.transport,
                                    verify=args.cafile or True, token=token)
        frames = open_source(args.camera, fps=args.fps, width=args.width, height=args.height)
    except PublisherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    others = publisher.server_urls[1:]
    print(f"publishing {args.camera} to {publisher.url} (view: {publisher.server_url}"
          f"/stream/{args.stream})" + (f"; if it fails: {', '.join(others)}" if others else ""),
          flush=True)
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    code = 0
    with publisher:
        try:
            server = publisher.server_url
            for frame in frames:
                publisher.publish_frame(frame)
                if publisher.server_url != server:  # failed over to the next server
                    server = publisher.server_url
                    printer.say(f"now publishing to {server}")
                printer.update(publisher.stats())
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except KeyboardInterrupt:
            pass
        except PublisherError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            code = 1
    stats = publisher.stats()
    printer.update(stats, force=True)
    if printer.tty:
        print()
    if code == 0 and stats["frames_sent"] == 0:
        # Nothing arrived: say why, whole (the status line shortens it), and fail.
        reason = stats["last_error"] or "no frame was sent"
        print(f"error: nothing was published to {publisher.url}: {reason}", file=sys.stderr)
        code = 1
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the example script."""
    parser = argparse.ArgumentParser(
        description="Publish a camera, a video file or a test pattern.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    return run(add_arguments(parser).parse_args(argv))
