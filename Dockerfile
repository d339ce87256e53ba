# One image for every Baton service and the `baton` CLI; the service is chosen by the command.
# The base is an argument, so a site with its own registry (or `make images-offline`) can substitute it:
#   docker build --build-arg PYTHON_IMAGE=registry.example/python:3.11-slim .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="baton"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin baton \
    && install -d -o baton -g baton /home/baton/index

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY shared/ shared/
COPY services/ services/
COPY baton/ baton/
COPY examples/ examples/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

USER baton

CMD ["python", "-m", "services.worker"]
