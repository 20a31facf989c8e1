# robogpt-video server image. Build: docker build -t robogpt-video .
# Run:   docker run -p 5000:5000 -v "$PWD/recordings:/app/recordings" robogpt-video
# Details (volumes, ownership, stop timeout): docs/deploy.md
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# A fixed, unprivileged user so host volumes can be chowned to a known uid.
RUN groupadd --system --gid 10001 robogpt \
 && useradd --system --uid 10001 --gid robogpt --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin robogpt

# The server only: the client extras (OpenCV, NumPy) stay out of the image. Every
# dependency ships a manylinux wheel (PyAV bundles its own FFmpeg), so no compiler.
COPY pyproject.toml README.md ./
COPY robogpt_video/ robogpt_video/
RUN pip install --no-cache-dir . \
 && rm -rf build *.egg-info

COPY run_server.py config.yaml ./
RUN mkdir -p recordings logs && chown robogpt:robogpt recordings logs

USER robogpt
VOLUME ["/app/recordings", "/app/logs"]
EXPOSE 5000

# Healthy while /health answers 200 ("degraded" still answers 200; see docs/deploy.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SERVER_PORT') or '5000'; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + port + '/health', timeout=4).status == 200 else 1)"]

# SIGTERM ends viewers, closes recordings and exits 0 within 10 s: docker stop's default.
STOPSIGNAL SIGTERM
CMD ["python", "run_server.py"]
