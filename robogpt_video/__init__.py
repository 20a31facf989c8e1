"""robogpt-video: JPEG ingest over HTTP, live MJPEG fan-out, recording and cleanup."""

__version__ = "0.1.0"
