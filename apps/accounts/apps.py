from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"

    def ready(self) -> None:
        from apps.accounts.site import sync_site

        # Sent for this app after the sites app's own handler has made its example.com row.
        post_migrate.connect(sync_site, sender=self, dispatch_uid="accounts.sync_site")
