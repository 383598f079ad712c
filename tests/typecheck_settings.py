"""The settings mypy's Django plugin loads (pyproject.toml): saas.settings with the tests' secrets,
since outside development the settings refuse to load without them."""

import os

from tests import pytest_env  # noqa: F401  (sets the tests' environment first)

# Importing saas starts Celery, whose tasks read the settings while this module is still loading:
# that nested read must load saas.settings itself, not this half-loaded module.
os.environ["DJANGO_SETTINGS_MODULE"] = "saas.settings"

from saas.settings import *  # noqa: E402, F403
