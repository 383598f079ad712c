"""Django admin: staff who may change users, but are not superusers, grant no more than they hold.
sam is such a staff member (view and change users, nothing else); every attempt goes through the
admin's own change form, as a browser would post it."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from apps.accounts.models import User
from tests.conftest import login, make_user

NOT_A_CHOICE = "Select a valid choice. {pk} is not one of the available choices."


def permission(codename: str) -> Permission:
    return Permission.objects.get(content_type__app_label="accounts", codename=codename)


@pytest.fixture
def sam(db: None) -> User:
    user = make_user("sam@example.com")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.add(permission("view_user"), permission("change_user"))
    return user


@pytest.fixture
def sam_client(client: Client, sam: User) -> Client:
    return login(client, sam)


def form_data(user: User, **changes: Any) -> dict[str, Any]:
    """The change form as the admin renders it for `user`, with `changes` applied."""
    data: dict[str, Any] = {
        "email": user.email,
        "name": user.name,
        "is_active": "on" if user.is_active else "",
        "is_staff": "on" if user.is_staff else "",
        "is_superuser": "on" if user.is_superuser else "",
        "groups": [group.pk for group in user.groups.all()],
        "user_permissions": [p.pk for p in user.user_permissions.all()],
        "date_joined_0": f"{user.date_joined:%Y-%m-%d}",
        "date_joined_1": f"{user.date_joined:%H:%M:%S}",
        "last_login_0": "",
        "last_login_1": "",
        "_save": "Save",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value != ""}


def change(client: Client, user: User, **changes: Any) -> Any:
    return client.post(f"/admin/accounts/user/{user.pk}/change/", form_data(user, **changes))


def test_staff_can_still_edit_what_they_may(sam_client: Client, sam: User, bob: User) -> None:
    """The positive control: the same form, within sam's rights, saves."""
    response = change(sam_client, bob, name="Bob B.", user_permissions=[permission("view_user").pk])

    assert response.status_code == 302, response.content.decode()
    bob.refresh_from_db()
    assert bob.name == "Bob B."
    assert list(bob.user_permissions.all()) == [permission("view_user")]


def test_staff_cannot_make_themselves_or_anyone_superuser(sam_client: Client, sam: User, bob: User) -> None:
    page = sam_client.get(f"/admin/accounts/user/{sam.pk}/change/").content.decode()
    assert 'name="is_superuser"' not in page

    # The forms save (is_superuser is not a field of theirs), and nobody is a superuser.
    assert change(sam_client, sam, is_superuser="on").status_code == 302
    assert change(sam_client, bob, is_superuser="on").status_code == 302

    sam.refresh_from_db()
    bob.refresh_from_db()
    assert (sam.is_superuser, bob.is_superuser) == (False, False)


def test_staff_cannot_grant_themselves_a_permission_they_lack(sam_client: Client, sam: User) -> None:
    delete_user = permission("delete_user")
    held = [p.pk for p in sam.user_permissions.all()]

    response = change(sam_client, sam, user_permissions=[*held, delete_user.pk])

    assert response.status_code == 200
    assert NOT_A_CHOICE.format(pk=delete_user.pk) in response.content.decode()
    assert not sam.has_perm("accounts.delete_user")
    assert set(sam.user_permissions.values_list("pk", flat=True)) == set(held)


def test_staff_cannot_grant_anyone_a_permission_they_lack(sam_client: Client, bob: User) -> None:
    superpower = permission("delete_organization")

    response = change(sam_client, bob, user_permissions=[superpower.pk])

    assert NOT_A_CHOICE.format(pk=superpower.pk) in response.content.decode()
    assert not bob.user_permissions.exists()


def test_staff_cannot_join_a_group_they_are_not_in(sam_client: Client, sam: User) -> None:
    admins = Group.objects.create(name="Admins")
    admins.permissions.add(*Permission.objects.all())

    response = change(sam_client, sam, groups=[admins.pk])

    assert NOT_A_CHOICE.format(pk=admins.pk) in response.content.decode()
    assert not sam.groups.exists()
    assert not User.objects.get(pk=sam.pk).has_perm("accounts.delete_user")


def test_staff_cannot_change_an_account_that_holds_more_than_they_do(sam_client: Client, sam: User) -> None:
    # given: a superuser, and a staff member with a permission sam lacks
    root = User.objects.create_superuser("root@example.com", "pw-root-123456")
    billing = make_user("billing@example.com")
    billing.user_permissions.add(permission("delete_user"))
    for target in (root, billing):
        # when sam tries to take the account over: its email, then its password
        edit = change(sam_client, target, email="sam+takeover@example.com")
        password = sam_client.post(
            f"/admin/accounts/user/{target.pk}/password/",
            {"password1": "Taken-over-123", "password2": "Taken-over-123", "usable_password": "true"},
        )
        # then
        assert (edit.status_code, password.status_code) == (403, 403)
        target.refresh_from_db()
        assert target.email != "sam+takeover@example.com"
        assert not target.check_password("Taken-over-123")
    # nor can sam delete them
    assert sam_client.post(f"/admin/accounts/user/{root.pk}/delete/", {"post": "yes"}).status_code == 403
    assert User.objects.filter(pk=root.pk).exists()


def test_staff_cannot_add_permissions_they_lack_to_their_own_group(client: Client, sam: User) -> None:
    # given: sam may change groups and belongs to "Support"
    sam.user_permissions.add(
        permission("change_user"), *Permission.objects.filter(codename__endswith="_group")
    )
    support = Group.objects.create(name="Support")
    sam.groups.add(support)
    login(client, sam)
    delete_user = permission("delete_user")
    # when
    response = client.post(
        f"/admin/auth/group/{support.pk}/change/", {"name": "Support", "permissions": [delete_user.pk]}
    )
    # then
    assert NOT_A_CHOICE.format(pk=delete_user.pk) in response.content.decode()
    assert not support.permissions.exists()
    assert not User.objects.get(pk=sam.pk).has_perm("accounts.delete_user")


def test_superusers_keep_every_power(client: Client, bob: User) -> None:
    login(client, User.objects.create_superuser("root@example.com", "pw-root-123456"))

    response = change(client, bob, is_superuser="on", user_permissions=[permission("delete_user").pk])

    assert response.status_code == 302
    bob.refresh_from_db()
    assert bob.is_superuser and bob.has_perm("accounts.delete_user")


def test_the_admin_cannot_add_a_bare_organization(client: Client, db: None) -> None:
    """Organizations come from onboarding, with their project and subscription; a superuser still
    sees and changes the ones that exist."""
    root = User.objects.create_superuser("root@example.com", "a-long-password-1")
    login(client, root)

    assert client.get("/admin/accounts/organization/add/").status_code == 403
    assert client.post("/admin/accounts/organization/add/", {"name": "Bare"}).status_code == 403
    assert client.get("/admin/accounts/organization/").status_code == 200
