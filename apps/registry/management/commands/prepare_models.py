from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.registry.catalog import sync_catalog
from apps.registry.models import Model


class Command(BaseCommand):
    help = "Sync the model catalog and convert the offline models into the model cache (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        created = sync_catalog(Model)
        self.stdout.write(f"catalog: {Model.objects.catalog().count()} models ({created} new)")
        # This command runs in its own process, where loading torch is fine; the web process
        # never imports this module's runtime dependency.
        try:
            from workers.runtime.catalog import prepare_smollm2
        except ImportError as exc:  # the `ml` extra is not installed here
            self.stdout.write(f"skipping model preparation: {exc}")
            return
        path = prepare_smollm2(settings.MODEL_CACHE_DIR)
        self.stdout.write(f"smollm2-135m-instruct ready in {path}")
