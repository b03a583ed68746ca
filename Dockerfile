# Serving image: ONNX Runtime + FAISS + FastAPI, no torch. Build from the repository root:
#   docker build -t twotower-serving .
#   docker run -p 8000:8000 -e TWOTOWER_API_TOKEN=... -v /path/to/bundle:/bundle:ro -v tt-state:/state twotower-serving
# The bundle is mounted (or COPY'd) at /bundle, histories live in the /state volume; settings come from
# TWOTOWER_* variables. The server listens on 0.0.0.0 here, so it refuses to start without TWOTOWER_API_TOKEN.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TWOTOWER_BUNDLE=/bundle \
    TWOTOWER_STATE_DIR=/state \
    TWOTOWER_HOST=0.0.0.0 \
    TWOTOWER_PORT=8000 \
    OMP_NUM_THREADS=1

WORKDIR /app
# The lock (serving/requirements.lock, compiled from serving/requirements.txt for this image's CPython 3.11 on
# Linux; docs/serving.md says how to refresh it): exact versions, and pip refuses any file whose hash differs.
COPY serving/requirements.lock /app/serving/requirements.lock
RUN pip install --no-cache-dir --require-hashes -r /app/serving/requirements.lock
COPY serving /app/serving

RUN useradd --system --uid 10001 --home /app twotower && mkdir /state && chown twotower /state
USER twotower
VOLUME /state

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"

CMD ["python", "-m", "serving"]
