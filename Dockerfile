# One image for every fraudserve process (API, stream worker, CLI jobs); docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY core ./core
COPY fraudserve ./fraudserve
COPY pipelines ./pipelines
COPY inference_api ./inference_api
COPY feature_repo ./feature_repo
RUN pip install --no-cache-dir -c constraints.txt -e '.[kafka,mlflow]' \
    && useradd --create-home --uid 10001 fraudserve \
    && mkdir -p /data && chown fraudserve /data
USER fraudserve
ENV FRAUDSERVE_HOME=/data FRAUDSERVE_FEATURE_REPO=/app/feature_repo
ENTRYPOINT ["fraudserve"]
CMD ["--help"]
