# The pipeline image: every stage is `pipeline <stage>` (api, sender, ingest, sandbox, topics create).
#   docker build -t whatsapp-delivery-pipeline .
#   docker run --rm whatsapp-delivery-pipeline api --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# requirements.lock pins every package, dev tools included; as constraints it pins the runtime
# dependencies without installing pytest, mypy and friends into the image.
COPY requirements.lock pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install --constraint requirements.lock . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pipeline

USER 10001
EXPOSE 8080 8081 8082 8090 9101 9102 9103
ENTRYPOINT ["pipeline"]
CMD ["--help"]
