from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction

from apps.accounts import actions


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request: Any, user: Any, form: Any, commit: bool = True) -> Any:
        """Signup creates the user's personal organization and a default project with it."""
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=commit)
            if commit:
                actions.create_personal_organization(user)
        return user
