"""Modelworks settings: one file, driven by the environment (see .env.example)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from apps.core import tasks
from workers.runtime.specs import PRECISIONS, QUANTIZATIONS, SHARDINGS

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_secret(name: str, default: str = "") -> str:
    """A secret from the environment, or from the file named by NAME_FILE (Docker secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def database_from_url(url: str) -> dict[str, object]:
    parts = urlparse(url)
    # `?host=/socket/dir&port=N` selects a Unix socket, as libpq URLs do (the embedded server).
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"DATABASE_URL must be a postgres:// URL, not {parts.scheme!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "modelworks",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.get("host") or parts.hostname or "",
        "PORT": query.get("port") or str(parts.port or ""),
        # Reuse connections, but check them first: a PostgreSQL restart then costs only the
        # requests in flight (docs/reliability.md, T13).
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"connect_timeout": 5},
    }


def fernet_key(name: str, value: str) -> str:
    """`value` if it is a usable Fernet key (32 url-safe base64 bytes): a typo must stop the start,
    not the first request that stores or reads an encrypted value."""
    try:
        Fernet(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} is not a Fernet key (32 url-safe base64-encoded bytes). Generate one with: "
            "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        ) from None
    return value


# --- Core -------------------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY")
# Outside development a missing or published key stops the start: with a key anyone knows, anyone
# can forge sessions, password-reset links and signed values.
if not DEBUG and (not SECRET_KEY or SECRET_KEY.startswith(("change-me", "django-insecure"))):
    raise ImproperlyConfigured(
        "SECRET_KEY is not set, or is still an example value. Set it to a long random string, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))' (or DEBUG=true for development)."
    )
# Development only. The prefix makes `check --deploy` flag it (security.W009).
SECRET_KEY = SECRET_KEY or "django-insecure-development-only-never-use-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
# The product's name in emails and pages. The Sites framework's one site takes its name from this
# and its domain from SITE_URL after every `migrate` (apps/accounts/site.py), so allauth's emails
# say "Modelworks", never the host a request happened to come in on.
SITE_NAME = os.environ.get("SITE_NAME", "Modelworks")
SITE_ID = 1
# Where customers write when something goes wrong; named on the sign-up and verification pages.
SUPPORT_EMAIL = os.environ.get("SUPPORT_EMAIL", "support@modelworks.localhost")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.sites",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "allauth",
    "allauth.account",
    "apps.accounts",
    "apps.projects",
    "apps.registry",
    "apps.jobs",
    "apps.billing",
    "apps.webhooks",
    "apps.evals",
    "apps.api",
    "apps.dashboard",
]

MIDDLEWARE = [
    "apps.api.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "apps.core.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "apps.accounts.middleware.CurrentOrganizationMiddleware",
    "apps.api.middleware.RefuseUnstorableTextMiddleware",
    "apps.api.middleware.ApiErrorMiddleware",
    "apps.api.middleware.HotCacheMiddleware",
]

TIME_ZONE = "UTC"
USE_TZ = True
LANGUAGE_CODE = "en-us"

ROOT_URLCONF = "saas.urls"
WSGI_APPLICATION = "saas.wsgi.application"
ASGI_APPLICATION = "saas.asgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.organizations",
                "apps.accounts.context_processors.product",
                "apps.dashboard.views.billing.banners",
            ],
        },
    },
]

# --- Data stores ----------------------------------------------------------------------------
DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modelworks")
    )
}
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "mw",
    }
}

# --- Storage: local disk under var/ by default, S3-compatible when a bucket is configured --
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MODEL_CACHE_DIR = Path(os.environ.get("MODEL_CACHE_DIR", VAR_DIR / "models"))
AWS_STORAGE_BUCKET_NAME = os.environ.get("AWS_STORAGE_BUCKET_NAME", "")
if AWS_STORAGE_BUCKET_NAME:
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": os.environ.get("AWS_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("AWS_S3_REGION_NAME") or None,
            "access_key": env_secret("AWS_ACCESS_KEY_ID") or None,
            "secret_key": env_secret("AWS_SECRET_ACCESS_KEY") or None,
            "default_acl": None,
            "file_overwrite": False,
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT)},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Tests and `make run` serve static files without collectstatic.
WHITENOISE_USE_FINDERS = DEBUG or env_bool("WHITENOISE_USE_FINDERS", False)
if WHITENOISE_USE_FINDERS:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

# --- Auth (django-allauth) ------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = os.environ.get("ACCOUNT_EMAIL_VERIFICATION", "mandatory")
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_GET = False
# The link in the verification email logs in the browser that signed up (allauth does it only for
# the session that is waiting for it, within ACCOUNT_LOGIN_TIMEOUT), so a new customer goes from
# the email straight to their projects.
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_ADAPTER = "apps.dashboard.adapter.AccountAdapter"
# Failed logins, on the dashboard and in the admin alike (they share the counts). In allauth
# 65.21, `login_failed`'s "key" is the account alone (site domain + email), whatever the address:
# a count per account lets anyone lock its owner out. With one such count, what it costs an
# attacker to keep an account locked is exactly what a guesser from many addresses may try, so
# raising or lowering it only trades one for the other. The owner is told apart by address:
# - 10/m/ip: one address guessing across accounts. It does the heavy lifting.
# - login_failed_from_ip, 5/5m and 20/h per account *at one address* (apps/dashboard/adapter.py):
#   a guesser from one address locks only that address out of that account; the owner, elsewhere,
#   still logs in.
# - 60/h per account from all addresses together: the ceiling for a guesser with many addresses,
#   as many guesses an hour as the former 5 per 5 minutes allowed. No single address can reach it
#   (20/h), so locking an owner out now takes 60 failures an hour from at least three addresses
#   (IPv6 counts by /64), and a password reset clears that count for the owner.
# An attempt refused for one address is not added to the account-wide count.
ACCOUNT_RATE_LIMITS = {"login_failed": "10/m/ip,60/h/key", "login_failed_from_ip": "5/5m/key,20/h/key"}
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard:home"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
# Organizations on the Free plan one person may own or have created. The Free plan's credit is
# per person: signup's personal organization is the first, so 1 means "no second free one"; an
# organization on a paid plan does not count. At least 1, or signup could not create that one.
FREE_ORGANIZATIONS_PER_USER = env_int("FREE_ORGANIZATIONS_PER_USER", 1)
if FREE_ORGANIZATIONS_PER_USER < 1:
    raise ImproperlyConfigured("FREE_ORGANIZATIONS_PER_USER must be at least 1: signup creates a free one")
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Email: console in development, SMTP when EMAIL_HOST is set -----------------------------
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Modelworks <noreply@modelworks.localhost>")

# --- Security ---------------------------------------------------------------------------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Behind one TLS-terminating proxy that sets X-Forwarded-Proto and appends the client's address
# to X-Forwarded-For. Only then are those headers believed: a client can send them too.
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The login limits count per client address too: the address the proxy appended, not the proxy's.
ALLAUTH_TRUSTED_PROXY_COUNT = 1 if BEHIND_TLS_PROXY else 0
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = 12 * 3600
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# Request limits. FILE_UPLOAD_MAX_MEMORY_SIZE is only the spill-to-disk point; the upload
# size cap is MAX_UPLOAD_BYTES, enforced while the body streams in.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 100 * 1024 * 1024)
PROMPT_MAX_BYTES = env_int("PROMPT_MAX_BYTES", 256 * 1024)
# How long a chat, completion or classification request waits for its worker before a 504.
INFERENCE_TIMEOUT_SECONDS = env_float("INFERENCE_TIMEOUT_SECONDS", 120)
# Requests of the same model waiting together are run as one batch on a worker, up to this many.
INFERENCE_MAX_BATCH = env_int("INFERENCE_MAX_BATCH", 8)
# The embedding model a text_similarity grader's `cosine` metric embeds with (docs/api.md, "Evals").
EVAL_EMBEDDING_MODEL = os.environ.get("EVAL_EMBEDDING_MODEL", "minilm-l6")
# An imported job's parity run, refused while the plan's places for eval runs are taken, is tried
# again this often, for a day (apps/evals/parity.py).
PARITY_RETRY_SECONDS = env_int("PARITY_RETRY_SECONDS", 60)
# Continuous batching: a serving worker's decode loop lets same-model requests that arrive while
# it decodes join at the next step (up to INFERENCE_MAX_BATCH rows), instead of waiting for the
# whole batch to finish. Off: a batch is only what was waiting when its task started.
INFERENCE_CONTINUOUS_BATCHING = env_bool("INFERENCE_CONTINUOUS_BATCHING", True)
# How often the running loop looks for newcomers (one SKIP LOCKED query): at most this often, so
# the cost per step stays small, and a newcomer waits at most this long before its prefill.
INFERENCE_JOIN_POLL_SECONDS = env_float("INFERENCE_JOIN_POLL_SECONDS", 0.05)
# A loop takes newcomers for this long after it starts, then drains and ends its task, so requests
# for other models (queued behind it on the same worker) wait at most this plus one batch's decode.
INFERENCE_JOIN_WINDOW_SECONDS = env_float("INFERENCE_JOIN_WINDOW_SECONDS", 30)
# Load shedding: past this many requests waiting for a worker of one queue, new ones get 503 with
# retry-after at once. 256 is ~15 s of the tiny-model throughput of one CPU worker (bench/load.py).
INFERENCE_MAX_QUEUED = env_int("INFERENCE_MAX_QUEUED", 256)
INFERENCE_SHED_RETRY_AFTER_SECONDS = env_int("INFERENCE_SHED_RETRY_AFTER_SECONDS", 2)
# How long a web process keeps its copy of an API key, a subscription or a model for the request
# path (apps.core.hotcache); a change invalidates copies at once, this bounds a missed invalidation.
# 0 reads the database on every request.
HOT_CACHE_SECONDS = env_float("HOT_CACHE_SECONDS", 10)
FILE_UPLOAD_HANDLERS = [
    "apps.projects.uploads.MaxSizeUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# --- Logging ----------------------------------------------------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "apps.api.middleware.RequestIdLogFilter"},
        # Invitation, password-reset and email-confirmation tokens in request paths (apps/core/redaction.py).
        "url_secrets": {"()": "apps.core.redaction.RedactUrlSecrets"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["request_id", "url_secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # runserver's request lines, through the same filters (Django gives them a handler of their own).
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# --- API (Django REST framework) --------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apps.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "apps.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Modelworks API",
    "DESCRIPTION": "OpenAI-compatible API for fine-tuning and serving your own models.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SCHEMA_PATH_PREFIX": "/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # One enum for the webhook event types, which endpoints, updates and tests all take.
    "ENUM_NAME_OVERRIDES": {"WebhookEventTypeEnum": "apps.webhooks.models.EVENT_TYPES"},
    # Serve Redoc and Swagger UI from our own static files, never from a CDN.
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
API_KEY_LAST_USED_RESOLUTION_SECONDS = 60
# Failed API-key authentications one client address may make in a sliding window. Past it, every
# request from that address that presents a key gets 429, a right key too, until the window
# moves on: otherwise the one guess answered differently would be the right one.
API_KEY_FAILURE_LIMIT = env_int("API_KEY_FAILURE_LIMIT", 10)
API_KEY_FAILURE_WINDOW_SECONDS = env_int("API_KEY_FAILURE_WINDOW_SECONDS", 60)
if API_KEY_FAILURE_LIMIT < 1 or API_KEY_FAILURE_WINDOW_SECONDS < 1:
    raise ImproperlyConfigured("API_KEY_FAILURE_LIMIT and API_KEY_FAILURE_WINDOW_SECONDS must be at least 1")

# --- Celery --------------------------------------------------------------------------------------
# Job state lives in PostgreSQL; Celery messages carry only (job_id, attempt).
# See docs/architecture.md, "Jobs".
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]  # never unpickle broker data
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TASK_IGNORE_RESULT = True  # results go to PostgreSQL; `ping` opts in explicitly
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# At-least-once: ack after the work, and put the message back if the child dies. Poison
# loops are stopped by our attempt cap in PostgreSQL, not by Celery.
CELERY_TASK_ACKS_LATE = True
# Env-overridable only for the chaos suite's negative control (docs/reliability.md, T3); never turn it off.
CELERY_TASK_REJECT_ON_WORKER_LOST = env_bool("CELERY_TASK_REJECT_ON_WORKER_LOST", True)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 10 * 60)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 12 * 60)
GPU_TASK_SOFT_TIME_LIMIT = env_int("GPU_TASK_SOFT_TIME_LIMIT", 6 * 3600)
# The hard limit kills the pool child (code that ignores the soft limit, or is stuck in a C call);
# the reaper then fails the job with `time_limit`. Overridable so the chaos suite can scale it down.
GPU_TASK_TIME_LIMIT = env_int("GPU_TASK_TIME_LIMIT", GPU_TASK_SOFT_TIME_LIMIT + 10 * 60)
# Redis has no real acks: an unacked message comes back after the visibility timeout, so it
# must outlive the longest hard limit or long jobs run twice.
# Overridable (smaller) only for the chaos suite's misconfiguration drill (docs/reliability.md, T5).
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", GPU_TASK_TIME_LIMIT + 3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "unacked_restore_interval": env_int("CELERY_UNACKED_RESTORE_INTERVAL", 10),
    "unacked_restore_throttle": 1,
    "socket_keepalive": True,
    "socket_connect_timeout": 5,
    "retry_on_timeout": True,
    "health_check_interval": 25,
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env_float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", 60.0)
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True

# Job liveness (our own layer over Celery). Tests scale these down.
JOB_HEARTBEAT_SECONDS = env_float("JOB_HEARTBEAT_SECONDS", 15)
JOB_SELF_FENCE_SECONDS = env_float("JOB_SELF_FENCE_SECONDS", 45)
JOB_STALE_SECONDS = env_float("JOB_STALE_SECONDS", 90)
JOB_REAPER_INTERVAL_SECONDS = env_float("JOB_REAPER_INTERVAL_SECONDS", 30)
JOB_QUEUED_STALE_SECONDS = env_float("JOB_QUEUED_STALE_SECONDS", 300)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3)
JOB_PROGRESS_INTERVAL_SECONDS = env_float("JOB_PROGRESS_INTERVAL_SECONDS", 2)
# Outbound webhooks (docs/api.md, "Webhooks"). A 2xx within the timeout counts; failures are retried
# with exponential backoff and jitter, from the base up to the cap between tries, until the window
# closes; an endpoint failing for `DISABLE_AFTER` is disabled and its owners emailed.
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10)
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 5)
WEBHOOK_RETRY_MAX_SECONDS = env_float("WEBHOOK_RETRY_MAX_SECONDS", 6 * 3600)
WEBHOOK_RETRY_WINDOW_SECONDS = env_float("WEBHOOK_RETRY_WINDOW_SECONDS", 72 * 3600)
WEBHOOK_DISABLE_AFTER_SECONDS = env_float("WEBHOOK_DISABLE_AFTER_SECONDS", 5 * 24 * 3600)
WEBHOOK_SWEEP_SECONDS = env_float("WEBHOOK_SWEEP_SECONDS", 5)
# A queued delivery whose task has not run by then is queued again (its message was lost).
WEBHOOK_REPUBLISH_SECONDS = env_float("WEBHOOK_REPUBLISH_SECONDS", 120)
WEBHOOK_SECRET_OVERLAP_SECONDS = env_float("WEBHOOK_SECRET_OVERLAP_SECONDS", 24 * 3600)
# Test events and resends, per organization and minute; events and their logs are kept this long.
WEBHOOK_MANUAL_SENDS_PER_MINUTE = env_int("WEBHOOK_MANUAL_SENDS_PER_MINUTE", 10)
WEBHOOK_RETENTION_DAYS = env_int("WEBHOOK_RETENTION_DAYS", 30)
# Endpoints must be public HTTPS URLs: a webhook must not reach into our own network. Development
# and tests deliver to a receiver on this machine over plain HTTP.
WEBHOOK_ALLOW_PRIVATE_URLS = env_bool("WEBHOOK_ALLOW_PRIVATE_URLS", DEBUG)

CELERY_BEAT_SCHEDULE = {
    "reap-jobs": {"task": tasks.REAP, "schedule": JOB_REAPER_INTERVAL_SECONDS},
    # Billing: usage to Stripe meters (hourly sums, sent as soon as an hour closes), webhooks Stripe
    # never delivered (its retries cover 3 days; this catches the rest), spend-alert emails.
    "billing-report-usage": {"task": tasks.REPORT_USAGE, "schedule": 60},
    "billing-reconcile-events": {"task": tasks.RECONCILE_STRIPE_EVENTS, "schedule": 3600},
    "billing-spend-alerts": {"task": tasks.CHECK_SPEND_ALERTS, "schedule": 300},
    # Webhook deliveries whose retry is due, or whose message was lost.
    "webhooks-send-due": {"task": tasks.SEND_DUE_WEBHOOKS, "schedule": WEBHOOK_SWEEP_SECONDS},
}
WORKER_HEARTBEAT_SECONDS = env_float("WORKER_HEARTBEAT_SECONDS", 10)
WORKER_HEARTBEAT_MAX_AGE_SECONDS = env_float("WORKER_HEARTBEAT_MAX_AGE_SECONDS", 60)

# Threads each worker process gives torch (0: torch's default, one per core).
WORKER_TORCH_THREADS = env_int("WORKER_TORCH_THREADS", 0)

# The dtype fine-tunes compute their forward passes in: "auto" (bf16 on GPUs and CPUs with bf16
# units), "bfloat16" or "float32". Weights and optimizer state are float32 whatever it says.
TRAINING_PRECISION = os.environ.get("TRAINING_PRECISION", "") or "auto"
if TRAINING_PRECISION not in PRECISIONS:
    raise ImproperlyConfigured(
        f"TRAINING_PRECISION must be one of {', '.join(PRECISIONS)}, not {TRAINING_PRECISION!r}"
    )

# The most devices one fine-tune may ask for (`devices`, data-parallel on one worker; docs/deploying.md):
# the GPU count of the training workers. CPU workers may use 2 or more to run ranks on processes.
TRAINING_MAX_DEVICES = env_int("TRAINING_MAX_DEVICES", 1)

# How the devices of such a fine-tune share the model: "ddp" (each holds all of it), "fsdp" (each
# holds 1/N of the weights, gradients and optimizer state), or "auto": fsdp for a full fine-tune
# whose training state would not fit one GPU (workers/runtime/distributed.py, choose_sharding).
TRAINING_SHARDING = os.environ.get("TRAINING_SHARDING", "") or "auto"
if TRAINING_SHARDING not in SHARDINGS:
    raise ImproperlyConfigured(
        f"TRAINING_SHARDING must be one of {', '.join(SHARDINGS)}, not {TRAINING_SHARDING!r}"
    )

# How a worker serves generation models on a CPU: "auto" (fp16 weights where it would serve
# float32, i.e. CPUs without AMX: ~1.9x faster decoding, same greedy tokens), "fp16", "int8"
# (faster still, but it degrades SmolLM2's output; see docs/architecture.md) or "none". GPUs and
# training never quantize.
SERVE_QUANTIZATION = os.environ.get("SERVE_QUANTIZATION", "") or "auto"
if SERVE_QUANTIZATION not in QUANTIZATIONS:
    raise ImproperlyConfigured(
        f"SERVE_QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}, not {SERVE_QUANTIZATION!r}"
    )

# A LoRA fine-tune is served as its adapter on the base the worker already holds (one copy of the
# base for all its fine-tunes; docs/architecture.md). false: each fine-tune loads its merged weights.
SERVE_LORA_ADAPTERS = env_bool("SERVE_LORA_ADAPTERS", True)

# --- Models and providers ---------------------------------------------------------------------
OPENAI_API_KEY = env_secret("OPENAI_API_KEY")
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "") or None
OPENAI_TIMEOUT_SECONDS = env_float("OPENAI_TIMEOUT_SECONDS", 60)
OPENAI_MAX_RETRIES = env_int("OPENAI_MAX_RETRIES", 2)
# Encrypts organizations' own provider keys at rest (apps.core.crypto). Required outside development:
# a key derived from anything else would change with it and make every stored key unreadable.
FIELD_ENCRYPTION_KEY = env_secret("FIELD_ENCRYPTION_KEY")
if FIELD_ENCRYPTION_KEY:
    FIELD_ENCRYPTION_KEY = fernet_key("FIELD_ENCRYPTION_KEY", FIELD_ENCRYPTION_KEY)
elif not DEBUG:
    raise ImproperlyConfigured(
        "FIELD_ENCRYPTION_KEY is not set. It encrypts organizations' own OpenAI keys; generate it once with "
        "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())' "
        "and keep it: keys stored under it cannot be read without it."
    )
else:  # development: stable for as long as SECRET_KEY is (`make run` keeps both under var/)
    FIELD_ENCRYPTION_KEY = base64.urlsafe_b64encode(
        hashlib.sha256(("fields:" + SECRET_KEY).encode()).digest()
    ).decode()

# --- Prices: micro-dollars per 1,000,000 units (the billing price book is seeded from this) --------
PRICE_BOOK: dict[str, dict[str, int]] = {
    "default": {
        "trained_tokens": 2_000_000,  # $2.00 per 1M trained tokens
        "input_tokens": 100_000,  # $0.10 per 1M
        "output_tokens": 400_000,  # $0.40 per 1M
        "classified_texts": 50_000_000,  # $0.05 per 1,000 texts
    },
    # A 22M-parameter encoder reads a text in a small fraction of a 135M decoder's compute, and
    # never generates: its texts are priced to match, so a distilled classifier is the cheap option.
    "minilm-l6": {"trained_tokens": 2_000_000, "input_tokens": 20_000, "classified_texts": 1_000_000},
    "smollm2-135m-instruct": {"trained_tokens": 3_000_000, "input_tokens": 100_000, "output_tokens": 400_000},
    # Proxied OpenAI models: the upstream price plus our margin.
    "openai:gpt-4o-mini": {"input_tokens": 165_000, "output_tokens": 660_000},
    "openai:text-embedding-3-small": {"input_tokens": 22_000},
}
# Plans seeded into the database (editable in admin). Money in micro-dollars.
PLANS = [
    {
        "slug": "free",
        "name": "Free",
        "monthly_price": 0,
        "included_credit": 5_000_000,
        "usage_beyond_credit": False,
        "requests_per_minute": 60,
        "tokens_per_minute": 200_000,
        "key_requests_per_minute": 60,
        "concurrent_fine_tunes": 1,
        "concurrent_batches": 1,
        "concurrent_requests": 4,
        "max_upload_bytes": 20 * 1024 * 1024,
        "allowed_models": ["*", "!openai:*"],
        "position": 0,
    },
    {
        "slug": "pro",
        "name": "Pro",
        "monthly_price": 49_000_000,
        "included_credit": 20_000_000,
        "usage_beyond_credit": True,
        "requests_per_minute": 600,
        "tokens_per_minute": 2_000_000,
        "key_requests_per_minute": 300,
        "concurrent_fine_tunes": 3,
        "concurrent_batches": 5,
        "concurrent_requests": 32,
        "max_upload_bytes": 100 * 1024 * 1024,
        "allowed_models": [],
        "position": 1,
        "stripe_price_id": os.environ.get("STRIPE_PRICE_PRO", ""),
    },
    {
        "slug": "team",
        "name": "Team",
        "monthly_price": 199_000_000,
        "included_credit": 100_000_000,
        "usage_beyond_credit": True,
        "requests_per_minute": 3000,
        "tokens_per_minute": 10_000_000,
        "key_requests_per_minute": 1000,
        "concurrent_fine_tunes": 10,
        "concurrent_batches": 20,
        "concurrent_requests": 128,
        "max_upload_bytes": 100 * 1024 * 1024,
        "allowed_models": [],
        "position": 2,
        "stripe_price_id": os.environ.get("STRIPE_PRICE_TEAM", ""),
    },
]
# Days a failed payment leaves paid work running before it stops.
BILLING_GRACE_DAYS = env_int("BILLING_GRACE_DAYS", 7)

# How long one worker trains, for time estimates (docs/api.md, "Hyperparameters"): examples a second,
# plus what each optimizer step costs whatever its batch. Measured on a 2-core CPU worker with one
# torch thread: MiniLM-L6 at batch 1 and 16 over 64 and 256 rows; SmolLM2's step from 18 chats at
# batch 1, 2, 4 and 8 (its examples' share is the older 4 examples a second at batch 8, less the
# step's part). A GPU worker is many times faster: set these from its own runs.
WORKER_THROUGHPUT = {"classification": 130.0, "generation": 20.0}
WORKER_STEP_SECONDS = {"classification": 0.32, "generation": 1.6}

# --- Stripe -----------------------------------------------------------------------------------
STRIPE_SECRET_KEY = env_secret("STRIPE_SECRET_KEY")
STRIPE_WEBHOOK_SECRET = env_secret("STRIPE_WEBHOOK_SECRET")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "") or None
