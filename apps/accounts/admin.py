from __future__ import annotations

from typing import Any, cast

from allauth.account.adapter import get_adapter
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, Permission
from django.db.models import Q, QuerySet
from django.forms import ModelMultipleChoiceField
from django.http import HttpRequest

from apps.accounts.models import ApiKey, Invitation, Membership, Organization, User


class AdminLoginForm(AdminAuthenticationForm):
    """The admin's login, through the same authentication as the dashboard's: allauth's adapter
    counts failures against the same limits (`ACCOUNT_RATE_LIMITS`), in the same counters, so a
    guesser gains nothing by switching pages. The staff-only check stays the admin's own."""

    def clean(self) -> dict[str, Any]:
        email = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if email is not None and password:
            # Raises "Too many failed login attempts" before the password is checked.
            self.user_cache = get_adapter(self.request).authenticate(
                self.request, email=email, password=password
            )
            if self.user_cache is None:
                raise self.get_invalid_login_error()
            self.confirm_login_allowed(self.user_cache)
        return self.cleaned_data


admin.site.login_form = AdminLoginForm


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


def granted_permissions(user: User) -> QuerySet[Permission]:
    """The permissions a user holds, directly or through a group, read from the database (an
    inactive user's `get_all_permissions()` is empty, but reactivating them brings these back)."""
    return Permission.objects.filter(Q(user=user) | Q(group__user=user)).distinct()


def outranks(user: User, editor: Any) -> bool:
    """Whether `user` holds something `editor` does not: editing such an account (its password,
    its email) would let the editor act as it."""
    if editor.is_superuser:
        return False
    if user.is_superuser:
        return True
    return granted_permissions(user).exclude(pk__in=granted_permissions(editor).values("pk")).exists()


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    """Staff who may change users but are not superusers grant no more than they hold: they
    cannot make anyone a superuser, give permissions or groups they lack, or edit an account that
    holds more than they do."""

    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "name"]
    fieldsets = (
        (None, {"fields": ("email", "password", "name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly.append("is_superuser")
        return readonly

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        editor = request.user
        if editor.is_superuser:
            return form
        # What the account already has stays selectable (it is no more than the editor holds, or
        # the account could not be edited at all); nothing else the editor lacks is offered.
        permissions, groups = Q(user=editor) | Q(group__user=editor), Q(user=editor)
        if obj is not None:
            permissions, groups = permissions | Q(user=obj), groups | Q(user=obj)
        fields = form.base_fields
        if "user_permissions" in fields:
            field = cast(ModelMultipleChoiceField, fields["user_permissions"])
            field.queryset = Permission.objects.filter(permissions).select_related("content_type").distinct()
        if "groups" in fields:
            cast(ModelMultipleChoiceField, fields["groups"]).queryset = Group.objects.filter(
                groups
            ).distinct()
        return form

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and outranks(obj, request.user):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and outranks(obj, request.user):
            return False
        return super().has_delete_permission(request, obj)


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin):
    """A group's permissions reach its members: staff who are not superusers add to a group only
    permissions they hold themselves."""

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        editor = request.user
        if not editor.is_superuser and "permissions" in form.base_fields:
            permissions = Q(user=editor) | Q(group__user=editor)
            if obj is not None:
                permissions |= Q(group=obj)
            field = cast(ModelMultipleChoiceField, form.base_fields["permissions"])
            field.queryset = Permission.objects.filter(permissions).select_related("content_type").distinct()
        return form


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "public_id", "created_by", "created_at"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id", "created_by", "created_at"]
    exclude = ["openai_api_key_encrypted"]
    inlines = [MembershipInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # An organization is made whole, with its project and subscription (`apps.projects.onboarding`:
        # signup, the dashboard, `manage.py create_tenant`); a bare row here would have neither.
        return False


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "organization__name"]
    autocomplete_fields = ["user", "organization"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "invited_by", "created_at", "accepted_at", "revoked_at"]
    list_filter = ["role"]
    search_fields = ["email", "organization__name"]
    exclude = ["token_hash"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "display_prefix",
        "project",
        "created_by",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["name", "prefix", "project__name", "project__organization__name"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]
    exclude = ["hashed_key"]
