"""Django settings, read from the environment once at start-up.

Two profiles, chosen by ``DJANGO_ENV``:

* ``development`` (default): convenient defaults so the demo and the tests run on a
  machine with nothing configured.
* ``production``: every setting that matters must be set explicitly and safely;
  :func:`check_production_settings` refuses to start otherwise and says what to fix.

Variables: ``DATABASE_URL``, ``REDIS_URL``, ``SECRET_KEY``, ``ALLOWED_HOSTS``
(comma-separated), ``DEBUG`` (true/false), ``DJANGO_ENV``, ``CSRF_TRUSTED_ORIGINS``,
``AGENT_HEARTBEAT_TIMEOUT_S``, ``POLICY_EVAL_INTERVAL_S``, ``COMMAND_TTL_S``,
``RESCALE_JOIN_TIMEOUT_S``, ``AUTO_GROW_DELAY_S``, ``CHANNEL_REFRESH_S``,
``CONTROL_PLANE_URL``, ``LOG_RETENTION_DAYS``, ``LOG_MAX_BYTES_PER_RUN``,
``GOODPUT_ALLOCATOR_INTERVAL_S``, ``GOODPUT_RESTART_S``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

DEVELOPMENT_SECRET_KEY = "insecure-development-key-do-not-use-in-production"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/adaptrain"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use true or false.")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None


def check_production_settings(
    *,
    secret_key: str,
    debug: bool,
    allowed_hosts: list[str],
    database_url: str | None,
    redis_url: str | None,
) -> list[str]:
    """Return what makes these settings unsafe for production (empty when they are fine)."""
    problems = []
    if not secret_key or secret_key == DEVELOPMENT_SECRET_KEY:
        problems.append(
            "SECRET_KEY is not set: set it to a long random string "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))')."
        )
    elif len(secret_key) < 32 or len(set(secret_key)) < 8:
        problems.append("SECRET_KEY is too short or too simple: use at least 32 random characters.")
    if debug:
        problems.append("DEBUG is true: set DEBUG=false (debug pages leak settings and code).")
    if not allowed_hosts:
        problems.append("ALLOWED_HOSTS is empty: list the host names the site is served under.")
    elif "*" in allowed_hosts:
        problems.append("ALLOWED_HOSTS contains '*': list the host names explicitly.")
    if not database_url:
        problems.append("DATABASE_URL is not set: point it at the PostgreSQL database.")
    if not redis_url:
        problems.append("REDIS_URL is not set: point it at the Redis server.")
    return problems


DJANGO_ENV = os.environ.get("DJANGO_ENV", "development").strip().lower()
if DJANGO_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"DJANGO_ENV={DJANGO_ENV!r}: use development or production.")
PRODUCTION = DJANGO_ENV == "production"

if PRODUCTION:
    SECRET_KEY = os.environ.get("SECRET_KEY", "")
    DEBUG = env_bool("DEBUG", False)
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
    _database_url = os.environ.get("DATABASE_URL")
    _redis_url = os.environ.get("REDIS_URL")
    _problems = check_production_settings(
        secret_key=SECRET_KEY,
        debug=DEBUG,
        allowed_hosts=ALLOWED_HOSTS,
        database_url=_database_url,
        redis_url=_redis_url,
    )
    if _problems:
        raise ImproperlyConfigured(
            "Refusing to start with DJANGO_ENV=production:\n  - " + "\n  - ".join(_problems)
        )
else:
    SECRET_KEY = os.environ.get("SECRET_KEY") or DEVELOPMENT_SECRET_KEY
    DEBUG = env_bool("DEBUG", True)
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
    _database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    _redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL

DATABASE_URL = _database_url
REDIS_URL = _redis_url
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    # Lowest first (see controlplane/__init__.py): an app's models, selectors and services
    # import only the apps listed before it; live's consumers are an entry point on top.
    "controlplane.accounts",
    "controlplane.bundles",
    "controlplane.jobs",
    "controlplane.metrics",
    "controlplane.logs",
    "controlplane.policies",
    "controlplane.slurm",
    "controlplane.live",
    "frontend",
]

MIDDLEWARE = [
    "controlplane.outage.OutageMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "frontend.context.vocabulary",
            ],
        },
    },
]

# Seconds a database connection is kept for reuse. 0 (the default) closes it at the end of
# each request: the web server runs under ASGI, where Django gives every request a thread
# of its own, and a kept connection outlives its thread idle — a stack of the fault tests
# held 40 after a few minutes of heartbeats and PostgreSQL refused new ones ("too many
# clients"). Django's docs say the same: disable persistent connections under ASGI and use
# a pooler (e.g. PgBouncer) if connecting costs too much.
DATABASE_CONN_MAX_AGE = env_float("DATABASE_CONN_MAX_AGE", 0.0)
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=int(DATABASE_CONN_MAX_AGE))
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py 8 times socket reads out after 5 s by default, exactly the length of
            # channels-redis's blocking receive (BZPOPMIN, 5 s): an idle WebSocket would
            # then fail every 5 s. Give reads headroom over the blocking timeout.
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
            "prefix": os.environ.get("CHANNELS_PREFIX", "adaptrain"),
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "adaptrain")

POLICY_EVAL_INTERVAL_S = env_float("POLICY_EVAL_INTERVAL_S", 2.0)
AGENT_HEARTBEAT_TIMEOUT_S = env_float("AGENT_HEARTBEAT_TIMEOUT_S", 30.0)
# A node silent past the heartbeat timeout is only unreachable: its jobs keep their status
# and its workers train on (they outlive their agent by AGENT_ORPHAN_GRACE_S, 600 s by
# default). Silent this much longer still, it is lost: its jobs shrink without it or fail.
NODE_LOST_GRACE_S = env_float("NODE_LOST_GRACE_S", 600.0)
if NODE_LOST_GRACE_S < 0:
    raise ImproperlyConfigured(
        f"NODE_LOST_GRACE_S={NODE_LOST_GRACE_S:g} must be 0 or more seconds (0: a silent node "
        f"is lost at the heartbeat timeout; keep it at least the agents' AGENT_ORPHAN_GRACE_S)."
    )
# Bounds on one metric batch from an agent; larger batches get a 413 that says so.
METRIC_BATCH_MAX_POINTS = 10_000
# Metric points of jobs that ended more than this many days ago are deleted (0 keeps all).
METRICS_RETENTION_DAYS = env_float("METRICS_RETENTION_DAYS", 30.0)
# A command nobody acknowledged within this many seconds expires (its job is told).
COMMAND_TTL_S = env_float("COMMAND_TTL_S", 600.0)
# WebSocket consumers join their channel-layer group again this often (a restarted Redis
# forgets groups), and a connected agent is sent again what it has not acknowledged
# within this many seconds (a push made while Redis was down reached nobody).
CHANNEL_REFRESH_S = env_float("CHANNEL_REFRESH_S", 5.0)
# A joiner of a grow that has not reported standby this many seconds after it was placed
# is given up on (jobs.expire_joiners); the job goes back to running.
RESCALE_JOIN_TIMEOUT_S = env_float("RESCALE_JOIN_TIMEOUT_S", 180.0)
# An elastic job below its wanted size is grown back once its membership has been still
# this long (doubled after each failed grow of the scheduler's, up to 10 minutes).
AUTO_GROW_DELAY_S = env_float("AUTO_GROW_DELAY_S", 30.0)
# Goodput-driven provisioning (controlplane.policies.provisioning): every this many seconds
# slots move between running elastic jobs to maximise their speedups (0: off, the default);
# a change is weighed as costing the job GOODPUT_RESTART_S seconds.
GOODPUT_ALLOCATOR_INTERVAL_S = env_float("GOODPUT_ALLOCATOR_INTERVAL_S", 0.0)
GOODPUT_RESTART_S = env_float("GOODPUT_RESTART_S", 30.0)
if GOODPUT_ALLOCATOR_INTERVAL_S < 0 or GOODPUT_RESTART_S < 0:
    raise ImproperlyConfigured(
        "GOODPUT_ALLOCATOR_INTERVAL_S and GOODPUT_RESTART_S must be 0 or positive seconds."
    )
# The URL agents reach the control plane at, written into the setup the nodes page's
# "Add a node" shows (AGENT_SERVER); unset: the URL the admin's browser reached it at.
CONTROL_PLANE_URL = os.environ.get("CONTROL_PLANE_URL", "").strip().rstrip("/")
if CONTROL_PLANE_URL and not CONTROL_PLANE_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(
        f"CONTROL_PLANE_URL={CONTROL_PLANE_URL!r} must be an http(s) URL such as "
        f"https://train.example.org"
    )

# Slurm allocations of agents (controlplane.slurm, docs/slurm.md): this host runs sbatch,
# squeue and scancel (a Slurm client configured for the cluster, munge key included).
SLURM_ENABLED = env_bool("SLURM_ENABLED", False)
SLURM_BIN_DIR = os.environ.get("SLURM_BIN_DIR", "").strip()  # empty: found on PATH
# The Python (with adaptrain installed) the compute nodes start the agent with.
SLURM_AGENT_PYTHON = os.environ.get("SLURM_AGENT_PYTHON", "").strip() or sys.executable
# More AGENT_* settings for the agents, "KEY=VALUE KEY=VALUE" (shell words).
SLURM_AGENT_ENV = os.environ.get("SLURM_AGENT_ENV", "")
# Where the batch jobs' output goes (on the compute nodes; %j is Slurm's job id).
SLURM_OUTPUT = os.environ.get("SLURM_OUTPUT", "/tmp/adaptrain-slurm-%j.out")
SLURM_SYNC_INTERVAL_S = env_float("SLURM_SYNC_INTERVAL_S", 10.0)
# Provisioning through Slurm (controlplane.slurm.autoscale, off by default): when the
# goodput allocator would put more nodes to use than the fleet has, request an allocation
# (at most SLURM_AUTOSCALE_MAX_NODES nodes in all and SLURM_AUTOSCALE_MAX_NODES_PER_USER for
# the jobs of one owner, one request per SLURM_AUTOSCALE_COOLDOWN_S), and release an
# autoscaled allocation whose nodes ran no worker for SLURM_AUTOSCALE_IDLE_S.
SLURM_AUTOSCALE = env_bool("SLURM_AUTOSCALE", False)
SLURM_AUTOSCALE_MAX_NODES = int(env_float("SLURM_AUTOSCALE_MAX_NODES", 4))
SLURM_AUTOSCALE_MAX_NODES_PER_USER = int(env_float("SLURM_AUTOSCALE_MAX_NODES_PER_USER", 2))
SLURM_AUTOSCALE_COOLDOWN_S = env_float("SLURM_AUTOSCALE_COOLDOWN_S", 300.0)
SLURM_AUTOSCALE_IDLE_S = env_float("SLURM_AUTOSCALE_IDLE_S", 300.0)
SLURM_AUTOSCALE_PARTITION = os.environ.get("SLURM_AUTOSCALE_PARTITION", "").strip()
SLURM_AUTOSCALE_GRES = os.environ.get("SLURM_AUTOSCALE_GRES", "").strip()
SLURM_AUTOSCALE_TIME = os.environ.get("SLURM_AUTOSCALE_TIME", "").strip()
if (
    SLURM_AUTOSCALE_MAX_NODES < 0
    or SLURM_AUTOSCALE_MAX_NODES_PER_USER < 0
    or SLURM_AUTOSCALE_COOLDOWN_S < 0
    or SLURM_AUTOSCALE_IDLE_S < 0
):
    raise ImproperlyConfigured("The SLURM_AUTOSCALE_* limits and times must be 0 or positive.")

# Workers' output (controlplane.logs): the lines of jobs that ended more than this many
# days ago are deleted (0 keeps all); a run keeps at most this much text (UTF-8 bytes),
# its oldest lines removed beyond it (0: no cap); a batch from an agent holds at most
# LOG_BATCH_MAX_LINES lines of at most LOG_LINE_MAX_CHARS characters each.
LOG_RETENTION_DAYS = env_float("LOG_RETENTION_DAYS", 30.0)
LOG_MAX_BYTES_PER_RUN = int(env_float("LOG_MAX_BYTES_PER_RUN", 256 * 2**20))
if LOG_RETENTION_DAYS < 0 or LOG_MAX_BYTES_PER_RUN < 0:
    raise ImproperlyConfigured(
        "LOG_RETENTION_DAYS and LOG_MAX_BYTES_PER_RUN must be 0 (no limit) or positive."
    )
LOG_BATCH_MAX_LINES = 10_000
LOG_LINE_MAX_CHARS = 65_536

CELERY_BEAT_SCHEDULE = {
    "evaluate-policies": {
        "task": "policies.evaluate_running_jobs",
        "schedule": POLICY_EVAL_INTERVAL_S,
    },
    "place-pending-jobs": {"task": "jobs.place_pending_jobs", "schedule": 5.0},
    "sync-slurm-allocations": {"task": "slurm.sync_allocations", "schedule": SLURM_SYNC_INTERVAL_S},
    "mark-lost-nodes": {"task": "jobs.mark_lost_nodes", "schedule": 10.0},
    "expire-commands": {"task": "jobs.expire_commands", "schedule": 30.0},
    "expire-joiners": {"task": "jobs.expire_joiners", "schedule": 10.0},
    "apply-metric-retention": {"task": "live.apply_retention", "schedule": 3600.0},
    "apply-log-retention": {"task": "logs.apply_retention", "schedule": 3600.0},
}
if GOODPUT_ALLOCATOR_INTERVAL_S > 0:
    CELERY_BEAT_SCHEDULE["allocate-cluster"] = {
        "task": "policies.allocate_cluster",
        "schedule": GOODPUT_ALLOCATOR_INTERVAL_S,
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an unauthenticated API call then gets 401 with WWW-Authenticate.
        "controlplane.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: one request format to document, validate and fuzz.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "controlplane.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "controlplane.schema.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "adaptrain API",
    "DESCRIPTION": "Adaptive distributed training: jobs, commands, metrics, policies, nodes. "
    "Errors are {code, message, details} with a 4xx status.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the drf-spectacular-sidecar package: nothing loaded from the internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Jobs and their runs share one status state machine, so one enum.
    "ENUM_NAME_OVERRIDES": {"JobStatusEnum": "controlplane.jobs.models.Job.Status"},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve straight from the apps' static folders too, so the demo needs no collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Code bundles (controlplane.bundles): at most BUNDLE_MAX_BYTES per archive, stored in a
# local directory, or in S3-compatible storage with BUNDLE_STORAGE=s3 (needs the s3 extra:
# django-storages and boto3; credentials from the AWS_* variables boto3 reads).
BUNDLE_MAX_BYTES = int(env_float("BUNDLE_MAX_BYTES", 100 * 1024 * 1024))
BUNDLE_STORAGE = os.environ.get("BUNDLE_STORAGE", "local").strip().lower()
if BUNDLE_STORAGE == "s3":
    _bundle_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ.get("BUNDLE_S3_BUCKET", ""),
            "endpoint_url": os.environ.get("BUNDLE_S3_ENDPOINT_URL") or None,
            "location": os.environ.get("BUNDLE_S3_PREFIX", "bundles"),
            "file_overwrite": False,
        },
    }
    if not _bundle_storage["OPTIONS"]["bucket_name"]:
        raise ImproperlyConfigured("BUNDLE_STORAGE=s3 needs BUNDLE_S3_BUCKET.")
elif BUNDLE_STORAGE == "local":
    _bundle_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": os.environ.get("BUNDLE_DIR") or str(BASE_DIR / ".data" / "bundles")
        },
    }
else:
    raise ImproperlyConfigured(f"BUNDLE_STORAGE={BUNDLE_STORAGE!r}: use local or s3.")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "bundles": _bundle_storage,
}

if PRODUCTION:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
