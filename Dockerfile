# The mdmflow image: one image for `mdmflow worker`, `mdmflow serve` and `mdmflow sim serve`.
#
#   docker build -t mdmflow .            (or let `docker compose build` do it)
#
# The builder stage installs into a virtualenv; the final stage gets only that virtualenv,
# the entrypoint and the healthcheck, and runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, so a source change does not reinstall them. Only the runtime
# dependencies (pyproject's [project] dependencies) are installed, every one of them and
# everything they pull in at the version requirements.lock pins (the lock also pins the
# test tools, which the image does not need; tests/test_compose.py checks that the lock
# covers the whole runtime set).
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > runtime-requirements.txt \
    && pip install -c requirements.lock -r runtime-requirements.txt

COPY . .
RUN pip install --no-deps . && pip check


FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MDMFLOW_VAR_DIR=/var/lib/mdmflow \
    MDMFLOW_LISTEN=0.0.0.0:9003
RUN groupadd --system --gid 10001 mdmflow \
    && useradd --system --uid 10001 --gid mdmflow --home-dir /var/lib/mdmflow \
        --no-create-home --shell /usr/sbin/nologin mdmflow \
    && install -d -o mdmflow -g mdmflow -m 0700 /var/lib/mdmflow
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/mdmflow-healthcheck

USER mdmflow
WORKDIR /var/lib/mdmflow
EXPOSE 9003
# The entrypoint turns MDMFLOW_*_FILE (secrets mounted as files) into MDMFLOW_* variables.
ENTRYPOINT ["docker-entrypoint", "mdmflow"]
CMD ["--help"]
