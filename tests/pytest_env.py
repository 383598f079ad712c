"""Loaded with `-p tests.pytest_env` (pyproject addopts), before Django reads its settings.

Test-only secrets, scaled-down job timings (docs/reliability.md, "Settings and bounds") and test-only
storage paths.
Workers started by the tests inherit the same environment.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Tests run with DEBUG off, as production does, so the settings require both secrets.
TEST_SECRETS = {
    "SECRET_KEY": "tests-only-secret-key-not-used-anywhere-else-0123456789abcdef",
    "FIELD_ENCRYPTION_KEY": "dGVzdHMtb25seS1maWVsZC1lbmNyeXB0aW9uLWtleSE=",
}
SCALED_ENV = {
    "JOB_HEARTBEAT_SECONDS": "0.5",
    "JOB_SELF_FENCE_SECONDS": "3",
    "JOB_STALE_SECONDS": "4",
    "JOB_REAPER_INTERVAL_SECONDS": "1",
    "JOB_QUEUED_STALE_SECONDS": "6",
    "JOB_PROGRESS_INTERVAL_SECONDS": "0.2",
    "WORKER_HEARTBEAT_SECONDS": "1",
    "OPENAI_TIMEOUT_SECONDS": "2",
    "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "WEBHOOK_RETRY_MAX_SECONDS": "1",
    "WEBHOOK_SWEEP_SECONDS": "0.5",
    "WEBHOOK_REPUBLISH_SECONDS": "5",
    "MEDIA_ROOT": str(ROOT / "var" / "test-media"),
    "MODEL_CACHE_DIR": str(ROOT / "var" / "models"),
    "WHITENOISE_USE_FINDERS": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WORKER_TORCH_THREADS": "1",
    # "auto" would train in bf16 on some hosts and float32 on others; the runtime's tests choose theirs.
    "TRAINING_PRECISION": "float32",
    # Serving tests compare the worker's output with float32 models; quantization has its own tests.
    "SERVE_QUANTIZATION": "none",
}
for key, value in {**TEST_SECRETS, **SCALED_ENV}.items():
    os.environ.setdefault(key, value)
# whitenoise warns about a missing STATIC_ROOT even when it serves from the finders.
(ROOT / "var" / "staticfiles").mkdir(parents=True, exist_ok=True)
