# syntax=docker/dockerfile:1
# TagIfAI API image: Gunicorn serving the default model, trained from data/ at build time.
#   docker build -t tagifai-api .
#   docker run --rm -p 8000:8000 tagifai-api
# The base is pinned by tag; pin it by digest too (python:3.11.11-slim-bookworm@sha256:...) once
# the registry you pull from is known.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- dependencies: a virtualenv built once, copied into the runtime stage without pip or its caches
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --require-virtualenv -r /tmp/requirements.txt

# --- model: train the default version, so the image never starts without one
FROM deps AS model
WORKDIR /app
ENV OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1
COPY tagifai_api/ tagifai_api/
COPY config/ config/
COPY data/ data/
RUN /opt/venv/bin/python -m tagifai_api ensure-model \
 && /opt/venv/bin/python -m tagifai_api predict "Transformers for text classification." >/dev/null

# --- runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PORT=8000
RUN groupadd --system --gid 10001 tagifai \
 && useradd --system --uid 10001 --gid tagifai --home-dir /app --shell /usr/sbin/nologin tagifai
WORKDIR /app
COPY --from=deps /opt/venv /opt/venv
COPY tagifai_api/ tagifai_api/
COPY config/ config/
COPY data/ data/
COPY gunicorn.conf.py wsgi.py ./
COPY --from=model /app/artifacts/ artifacts/
# the code and the model versions stay root-owned and read-only: the registry's state is in the store.
# /app/var holds the image's own SQLite store (TAGIFAI_DATABASE_URL's default), for the image run
# alone; replicas name a shared database instead. /var/lib/tagifai/artifacts is where compose mounts
# its versions volume: a new named volume takes this directory's owner, so `seed` can copy into it
RUN mkdir -p /var/lib/tagifai/artifacts /app/var \
 && chown tagifai:tagifai /var/lib/tagifai/artifacts /app/var
USER tagifai
# as the runtime user: the image's store records the version trained above as its default (so
# `docker run` alone serves it), and that version loads from the read-only copy; a failure here
# fails the build rather than training another version
RUN python -m tagifai_api seed /app/artifacts \
 && python -m tagifai_api predict "Transformers for text classification." >/dev/null
EXPOSE 8000
# python, not curl (slim has none); fails on any non-2xx answer or no answer within 3 s
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PORT', '8000'), timeout=3)"]
# exec form: Gunicorn is PID 1 and gets SIGTERM directly, for a graceful shutdown
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
