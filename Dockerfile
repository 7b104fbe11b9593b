# One image for the Python services: web (ASGI), Celery worker and beat, and the agent.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
# Builds the native collective library (scikit-build-core + nanobind) as part of the install.
RUN pip install '/app[all]' && useradd --create-home --uid 10001 adaptrain \
    && python manage.py collectstatic --noinput
USER adaptrain
EXPOSE 8000
CMD ["uvicorn", "controlplane.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
