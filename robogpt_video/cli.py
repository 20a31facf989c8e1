"""Command line: ``robogpt-video serve`` (and more subcommands as they come)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_settings
    from .server import serve

    overrides: dict[str, dict] = {}
    if args.host is not None:
        overrides.setdefault("server", {})["host"] = args.host
    if args.port is not None:
        overrides.setdefault("server", {})["port"] = args.port
    if args.log_level is not None:
        overrides.setdefault("logging", {})["level"] = args.log_level
    if args.recordings is not None:
        overrides.setdefault("recording", {})["directory"] = args.recordings
    try:
        settings = load_settings(args.config, overrides)
        if args.workers > 1:
            from .workers import run_workers

            return run_workers(settings, args.workers, args.argv)
        if args.worker_index is not None:  # one of --workers N: its own node name
            import socket

            base = settings.cluster.node_name or f"{socket.gethostname()}:{settings.server.port}"
            overrides.setdefault("cluster", {})["node_name"] = f"{base}:{args.worker_index}"
            settings = load_settings(args.config, overrides)
        # TLS files are checked before serving
        serve(settings, reuse_port=args.worker_index is not None)
    except ConfigError as exc:
        print(f"robogpt-video: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``robogpt-video`` argument parser."""
    parser = argparse.ArgumentParser(prog="robogpt-video", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the streaming server")
    serve.add_argument(
        "--config", type=Path, help="YAML config (default: $ROBOGPT_CONFIG, else ./config.yaml)"
    )
    serve.add_argument("--host", help="bind address (server.host)")
    serve.add_argument("--port", type=int, help="port, 0 for any free one (server.port)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... (logging.level)")
    serve.add_argument("--recordings", type=Path, help="recording directory (recording.directory)")
    serve.add_argument(
        "--workers", type=int, default=1,
        help="processes on this port (SO_REUSEPORT), sharing streams through cluster.redis_url",
    )
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)
    # Imported here, not at the top: the client needs none of the server's modules.
    from .client.cli import add_arguments, run

    publish = sub.add_parser(
        "publish",
        help="publish a camera, video file or test pattern to a server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(publish).set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``robogpt-video`` command."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
