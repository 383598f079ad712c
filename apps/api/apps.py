from typing import Any

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "apps.api"
    label = "api"

    def ready(self) -> None:
        from apps.api import schema  # noqa: F401  (registers the OpenAPI auth extension)

        connect_hot_cache_invalidation()


def connect_hot_cache_invalidation() -> None:
    """Every model whose rows the request path copies (apps.core.hotcache): an API key with its
    project, organization and creator, the creator's membership, the subscription with its plan,
    the models a request may name and the aliases that name them. Saves and deletes (cascades included) send these signals;
    a queryset `update()` does not, so the actions that use one on these rows invalidate
    themselves (`apps.projects.actions.revoke_api_key`)."""
    from django.contrib.auth import get_user_model
    from django.db.models.signals import post_delete, post_save

    from apps.accounts.models import ApiKey, Membership, Organization
    from apps.billing.models import Plan, Subscription
    from apps.projects.models import Project
    from apps.registry.models import Model, ModelAlias

    for model in (
        ApiKey,
        Membership,
        Organization,
        get_user_model(),
        Project,
        Plan,
        Subscription,
        Model,
        ModelAlias,
    ):
        post_save.connect(_invalidate, sender=model, dispatch_uid=f"hotcache-save-{model._meta.label}")
        post_delete.connect(_invalidate, sender=model, dispatch_uid=f"hotcache-delete-{model._meta.label}")


# Saves that change nothing the request path reads (every login writes last_login).
UNREAD_FIELDS = frozenset({"last_login"})


def _invalidate(update_fields: frozenset[str] | None = None, **_: Any) -> None:
    from apps.core import hotcache

    if update_fields and set(update_fields) <= UNREAD_FIELDS:
        return

    hotcache.invalidate()
