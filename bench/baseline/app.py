"""Baseline: the straightforward Flask build of the brief (for benchmarks only).

Flask's threaded server, one ``threading.Condition`` per stream, a generator per
MJPEG viewer, and a recording thread per stream that decodes each JPEG and writes
it with OpenCV's ``mp4v`` ``VideoWriter``. Kept deliberately plain — but fair:
request logging is off and recording drops frames instead of blocking publishers.
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from flask import Flask, Response, jsonify, request


class Recorder(threading.Thread):
    """Decodes frames and writes them to an mp4v file."""

    def __init__(self, name: str, directory: Path, fps: int = 30):
        super().__init__(daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize=30)
        self.path = directory / name / f"{name}_{time.strftime('%Y%m%d_%H%M%S')}.mp4"
        self.fps = fps
        self.writer = None
        self.dropped = 0

    def put(self, jpeg: bytes) -> None:
        """Queue a frame, dropping it when the writer is behind."""
        try:
            self.queue.put_nowait(jpeg)
        except queue.Full:
            self.dropped += 1

    def run(self) -> None:
        while True:
            jpeg = self.queue.get()
            if jpeg is None:
                break
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            if self.writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                height, width = image.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
            self.writer.write(image)
        if self.writer is not None:
            self.writer.release()


class Stream:
    """Latest frame + condition variable."""

    def __init__(self, name: str, recorder: Recorder | None):
        self.name = name
        self.cond = threading.Condition()
        self.frame: bytes | None = None
        self.seq = 0
        self.viewers = 0
        self.created = time.time()
        self.recorder = recorder


def create_app(recordings: Path, record: bool) -> Flask:
    """The Flask app."""
    app = Flask(__name__)
    streams: dict[str, Stream] = {}
    lock = threading.Lock()

    def get_or_create(name: str) -> Stream:
        with lock:
            stream = streams.get(name)
            if stream is None:
                recorder = Recorder(name, recordings) if record else None
                if recorder:
                    recorder.start()
                stream = streams[name] = Stream(name, recorder)
            return stream

    @app.route("/publish/<name>", methods=["POST"])
    def publish(name):
        file = request.files.get("frame")
        if file is None:
            return jsonify(status="error", message="no frame"), 400
        data = file.read()
        stream = get_or_create(name)
        with stream.cond:
            stream.frame = data
            stream.seq += 1
            stream.cond.notify_all()
        if stream.recorder:
            stream.recorder.put(data)
        return jsonify(status="success", stream=name, frame_size=len(data))

    @app.route("/stream/<name>")
    def view(name):
        stream = streams.get(name)
        if stream is None:
            return jsonify(status="error", message="not found"), 404

        def generate():
            last = 0
            stream.viewers += 1
            try:
                while True:
                    with stream.cond:
                        stream.cond.wait_for(lambda: stream.seq != last, timeout=1.0)
                        frame, last = stream.frame, stream.seq
                    if frame is not None:
                        yield b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + frame + b"\r\n"
            finally:
                stream.viewers -= 1

        return Response(generate(), mimetype="multipart/x-mixed-replace; boundary=frame")

    @app.route("/api/streams")
    def list_streams():
        items = [
            {"name": s.name, "total_frames": s.seq, "viewer_count": s.viewers}
            for s in list(streams.values())
        ]
        return jsonify(count=len(items), streams=items)

    @app.route("/health")
    def health():
        return jsonify(status="healthy", active_streams=len(streams))

    return app


def main() -> None:
    """``python -m bench.baseline.app --port N --recordings DIR [--no-record]``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--recordings", type=Path, required=True)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(args.recordings, not args.no_record)
    app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
