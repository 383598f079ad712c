from __future__ import annotations

import html
import re
from typing import Any

import pytest
from django.core import mail

from apps.accounts.models import Invitation, Membership, Organization, Role
from tests.conftest import login, make_user


def invite(client: Any, email: str, role: str = "member") -> str:
    from django.test import TestCase

    # The email leaves after the transaction commits.
    with TestCase.captureOnCommitCallbacks(execute=True):
        client.post("/team/", {"email": email, "role": role})
    link = re.search(r"/invitations/([^/\s]+)/", mail.outbox[-1].body)
    assert link, mail.outbox[-1].body
    return link.group(1)


def test_invite_accept_change_role_remove(client: Any, alice: Any, alice_org: Any) -> None:
    # given alice invites dave
    login(client, alice)
    token = invite(client, "dave@example.com")
    assert mail.outbox[-1].to == ["dave@example.com"]
    # when dave accepts
    dave = make_user("dave@example.com")
    login(client, dave)
    assert client.get(f"/invitations/{token}/").status_code == 200
    response = client.post(f"/invitations/{token}/")
    assert response.status_code == 302
    membership = Membership.objects.get(user=dave, organization=alice_org)
    assert membership.role == Role.MEMBER
    # then alice makes dave an admin, then removes him
    login(client, alice)
    client.post(f"/team/members/{membership.pk}/role", {"role": "admin"})
    assert Membership.objects.get(pk=membership.pk).role == Role.ADMIN
    client.post(f"/team/members/{membership.pk}/remove")
    assert not Membership.objects.filter(pk=membership.pk).exists()


def test_an_invitation_works_once_and_only_for_its_address(client: Any, alice: Any, alice_org: Any) -> None:
    login(client, alice)
    token = invite(client, "dave@example.com")
    mallory = make_user("mallory@example.com")
    login(client, mallory)
    response = client.post(f"/invitations/{token}/", follow=True)
    assert "This invitation was sent to dave@example.com" in response.content.decode()
    assert not Membership.objects.filter(user=mallory, organization=alice_org).exists()
    dave = make_user("dave@example.com")
    login(client, dave)
    client.post(f"/invitations/{token}/")
    assert client.get(f"/invitations/{token}/").status_code == 404
    assert Invitation.objects.get().accepted_at is not None


def test_a_line_break_in_the_organizations_name_keeps_the_invitation_subject_one_line(
    client: Any, alice: Any, alice_org: Any
) -> None:
    Organization.objects.filter(pk=alice_org.pk).update(name="Acme\nBcc: attacker@evil.example")
    login(client, alice)

    invite(client, "dave@example.com")

    message = mail.outbox[-1]
    assert message.subject == "You are invited to Acme Bcc: attacker@evil.example on Modelworks"
    assert message.recipients() == ["dave@example.com"]


def test_an_invitation_to_something_that_is_not_an_email_address_is_refused(
    client: Any, alice: Any, alice_org: Any
) -> None:
    from django.test import TestCase

    login(client, alice)
    for address in ("dave@example.com\nBcc: attacker@evil.example", "dave"):
        with TestCase.captureOnCommitCallbacks(execute=True):
            response = client.post("/team/", {"email": address, "role": "member"}, follow=True)
        assert (
            f"{address.lower()!r} is not an email address.".replace("'", "&#x27;")
            in response.content.decode()
        )
    assert not Invitation.objects.exists()
    assert mail.outbox == []


def test_members_cannot_manage_the_team(client: Any, alice: Any, bob: Any, alice_org: Any) -> None:
    login(client, bob)
    response = client.post("/team/", {"email": "x@example.com", "role": "member"}, follow=True)
    assert "Only owners and admins can do that." in response.content.decode()
    assert not Invitation.objects.exists()
    alice_membership = Membership.objects.get(user=alice)
    client.post(f"/team/members/{alice_membership.pk}/role", {"role": "member"})
    client.post(f"/team/members/{alice_membership.pk}/remove")
    assert Membership.objects.get(pk=alice_membership.pk).role == Role.OWNER


def test_the_last_owner_cannot_leave_or_be_demoted(client: Any, alice: Any, bob: Any) -> None:
    login(client, alice)
    mine = Membership.objects.get(user=alice)
    response = client.post(f"/team/members/{mine.pk}/remove", follow=True)
    assert "The last owner cannot leave. Make someone else an owner first." in response.content.decode()
    response = client.post(f"/team/members/{mine.pk}/role", {"role": "member"}, follow=True)
    assert "An organization needs at least one owner." in response.content.decode()
    assert Membership.objects.get(pk=mine.pk).role == Role.OWNER
    # with a second owner, alice can leave
    bobs = Membership.objects.get(user=bob)
    client.post(f"/team/members/{bobs.pk}/role", {"role": "owner"})
    client.post(f"/team/members/{mine.pk}/remove")
    assert not Membership.objects.filter(pk=mine.pk).exists()


def test_a_member_can_leave(client: Any, bob: Any) -> None:
    login(client, bob)
    bobs = Membership.objects.get(user=bob)
    client.post(f"/team/members/{bobs.pk}/remove")
    assert not Membership.objects.filter(pk=bobs.pk).exists()


def test_outsiders_get_404_for_team_members(client: Any, alice: Any, carol: Any) -> None:
    login(client, carol)
    alices = Membership.objects.get(user=alice)
    assert client.post(f"/team/members/{alices.pk}/role", {"role": "member"}).status_code == 404
    assert client.post(f"/team/members/{alices.pk}/remove").status_code == 404
    assert "alice@example.com" not in client.get("/team/").content.decode()


def test_the_organization_switcher_only_offers_own_organizations(
    client: Any, alice: Any, carol: Any, settings: Any
) -> None:
    from apps.projects import onboarding

    settings.FREE_ORGANIZATIONS_PER_USER = 2
    login(client, alice)
    second = onboarding.create_organization(alice, "Second")
    carols = carol.memberships.get().organization
    page = client.get("/projects/").content.decode()
    assert "Acme" in page and "Second" in page and "Outsiders Inc" not in page
    assert client.post("/organizations/switch", {"organization": carols.public_id}).status_code == 404
    client.post("/organizations/switch", {"organization": second.public_id})
    assert "Default project" in client.get("/projects/").content.decode()
    assert client.session["organization_id"] == second.public_id


# --- Invitations: listed and revoked by managers, void when their inviter may no longer invite ----
INVITER_GONE = (
    "This invitation is no longer valid: the person who sent it may no longer invite people to Acme. "
    "Ask an owner or admin of Acme for a new invitation."
)


def test_managers_list_and_revoke_invitations(client: Any, alice: Any, erin: Any) -> None:
    # given: erin, an admin, invited dave
    login(client, erin)
    token = invite(client, "dave@example.com")
    invitation = Invitation.objects.get()
    # when alice lists and revokes it
    login(client, alice)
    listed = client.get("/team/").content.decode().split('id="invitations"')[1].split("</table>")[0]
    response = client.post(f"/team/invitations/{invitation.pk}/revoke", follow=True)
    # then
    assert "dave@example.com" in listed and "erin@example.com" in listed
    assert f'action="/team/invitations/{invitation.pk}/revoke"' in listed
    assert (
        "The invitation to dave@example.com was revoked; its link no longer works."
        in response.content.decode()
    )
    assert 'id="invitations"' not in response.content.decode()
    assert Invitation.objects.get().revoked_at is not None
    dave = make_user("dave@example.com")
    login(client, dave)
    assert client.get(f"/invitations/{token}/").status_code == 404
    response = client.post(f"/invitations/{token}/")
    assert response.status_code == 404
    assert not Membership.objects.filter(user=dave).exists()


def test_an_admin_revokes_an_invitation_the_owner_sent(
    client: Any, alice: Any, erin: Any, alice_org: Any
) -> None:
    from apps.accounts import actions

    invitation = actions.invite_member(alice_org, alice, "dave@example.com", Role.MEMBER)
    login(client, erin)

    assert "dave@example.com" in client.get("/team/").content.decode()
    client.post(f"/team/invitations/{invitation.pk}/revoke")

    assert Invitation.objects.get().revoked_at is not None


def test_members_neither_see_nor_revoke_invitations(
    client: Any, alice: Any, bob: Any, alice_org: Any
) -> None:
    from apps.accounts import actions

    invitation = actions.invite_member(alice_org, alice, "dave@example.com", Role.MEMBER)

    login(client, bob)
    page = client.get("/team/").content.decode()
    response = client.post(f"/team/invitations/{invitation.pk}/revoke", follow=True)

    assert "dave@example.com" not in page
    assert "Only owners and admins can do that." in response.content.decode()
    assert Invitation.objects.get().revoked_at is None


def test_outsiders_get_404_for_revoking_an_invitation(client: Any, alice: Any, carol: Any) -> None:
    login(client, alice)
    invite(client, "dave@example.com")
    invitation = Invitation.objects.get()

    login(client, carol)

    assert client.post(f"/team/invitations/{invitation.pk}/revoke").status_code == 404
    assert Invitation.objects.get().revoked_at is None


def test_an_invitation_is_void_once_its_inviter_leaves(client: Any, alice: Any, erin: Any) -> None:
    # given: erin, an admin, invited dave, then left the organization
    login(client, erin)
    token = invite(client, "dave@example.com")
    client.post(f"/team/members/{Membership.objects.get(user=erin).pk}/remove")
    # when dave opens the link, then accepts anyway
    dave = make_user("dave@example.com")
    login(client, dave)
    page = client.get(f"/invitations/{token}/")
    response = client.post(f"/invitations/{token}/", follow=True)
    # then
    assert page.status_code == 404
    assert INVITER_GONE in html.unescape(page.content.decode())
    assert "Accept invitation" not in page.content.decode()
    assert INVITER_GONE in html.unescape(response.content.decode())
    assert not Membership.objects.filter(user=dave).exists()
    assert Invitation.objects.get().accepted_at is None
    # and the team page marks it as void for the managers
    login(client, alice)
    assert "void: its sender may no longer invite" in client.get("/team/").content.decode()


def test_an_invitation_is_void_while_its_inviter_is_demoted(alice: Any, erin: Any, alice_org: Any) -> None:
    from django.test import TestCase

    from apps.accounts import actions
    from apps.core.errors import ActionError

    with TestCase.captureOnCommitCallbacks(execute=True):
        actions.invite_member(alice_org, erin, "dave@example.com", Role.MEMBER)
    token = re.search(r"/invitations/([^/\s]+)/", mail.outbox[-1].body).group(1)  # type: ignore[union-attr]
    dave = make_user("dave@example.com")
    erins = Membership.objects.get(user=erin)

    actions.change_role(alice, erins, Role.MEMBER)
    try:
        actions.accept_invitation(token, dave)
    except ActionError as exc:
        assert exc.message == INVITER_GONE
    else:
        raise AssertionError("a demoted inviter's invitation was accepted")
    assert not Membership.objects.filter(user=dave).exists()
    # the right to invite came back: so does the invitation
    actions.change_role(alice, erins, Role.ADMIN)
    assert actions.accept_invitation(token, dave).role == Role.MEMBER


def test_an_owner_invitation_is_void_once_its_inviter_is_no_longer_an_owner(
    client: Any, alice: Any, bob: Any, alice_org: Any
) -> None:
    from apps.accounts import actions

    actions.change_role(alice, Membership.objects.get(user=bob), Role.OWNER)
    login(client, bob)
    token = invite(client, "dave@example.com", role="owner")
    actions.change_role(alice, Membership.objects.get(user=bob), Role.ADMIN)

    dave = make_user("dave@example.com")
    login(client, dave)
    response = client.post(f"/invitations/{token}/", follow=True)

    assert INVITER_GONE in html.unescape(response.content.decode())
    assert not Membership.objects.filter(user=dave).exists()


def test_an_invitation_whose_inviter_was_deleted_is_void(client: Any, alice: Any, erin: Any) -> None:
    login(client, erin)
    token = invite(client, "dave@example.com")
    erin.delete()

    login(client, make_user("dave@example.com"))
    page = client.get(f"/invitations/{token}/")

    assert page.status_code == 404 and INVITER_GONE in html.unescape(page.content.decode())


def test_an_invitation_whose_inviter_was_deactivated_is_void(client: Any, alice: Any, erin: Any) -> None:
    # given: erin, an admin, invited dave, then her account was deactivated (she is still a member)
    login(client, erin)
    token = invite(client, "dave@example.com")
    erin.is_active = False
    erin.save(update_fields=["is_active"])
    # when dave opens the link, then accepts anyway
    dave = make_user("dave@example.com")
    login(client, dave)
    page = client.get(f"/invitations/{token}/")
    response = client.post(f"/invitations/{token}/", follow=True)
    # then the invitation is void, as her API keys and sessions are
    assert page.status_code == 404 and INVITER_GONE in html.unescape(page.content.decode())
    assert INVITER_GONE in html.unescape(response.content.decode())
    assert not Membership.objects.filter(user=dave).exists()


# --- Inviting an address again, and resending: one invitation, a new link, a new lifetime ----------
def links_to(email: str) -> list[str]:
    return [
        re.search(r"/invitations/([^/\s]+)/", message.body).group(1)  # type: ignore[union-attr]
        for message in mail.outbox
        if message.to == [email]
    ]


def test_inviting_an_address_with_a_pending_invitation_updates_it(
    client: Any, alice: Any, erin: Any, alice_org: Any
) -> None:
    # given alice invited dave as a member
    login(client, alice)
    first = invite(client, "dave@example.com")
    # when erin invites him again, as an admin
    login(client, erin)
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        response = client.post("/team/", {"email": "Dave@Example.com ", "role": "admin"}, follow=True)
    # then: still one invitation, updated, and a second email with a new link
    assert (
        html.unescape(response.content.decode()).count(
            "dave@example.com already had a pending invitation: it now invites them as admin and was sent again "
            "with a new link. The earlier link no longer works."
        )
        == 1
    )
    invitation = Invitation.objects.get()
    assert (invitation.role, invitation.invited_by, invitation.send_count) == (Role.ADMIN, erin, 2)
    first_link, second = links_to("dave@example.com")
    assert first_link == first and second != first
    assert "erin@example.com invited you to join Acme on Modelworks as admin." in mail.outbox[-1].body
    dave = make_user("dave@example.com")
    login(client, dave)
    assert client.get(f"/invitations/{first}/").status_code == 404
    client.post(f"/invitations/{second}/")
    assert Membership.objects.get(user=dave).role == Role.ADMIN


def test_a_pending_invitation_is_resent_with_a_new_link_and_lifetime(
    client: Any, alice: Any, alice_org: Any
) -> None:
    from datetime import timedelta

    from django.test import TestCase
    from django.utils import timezone

    # given an invitation sent six days ago
    login(client, alice)
    old = invite(client, "dave@example.com")
    invitation = Invitation.objects.get()
    Invitation.objects.filter(pk=invitation.pk).update(sent_at=timezone.now() - timedelta(days=6))
    # when alice resends it
    before = timezone.now()
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = client.post(f"/team/invitations/{invitation.pk}/resend", follow=True)
    # then
    assert (
        "The invitation to dave@example.com was sent again with a new link, valid for 7 days. The earlier "
        "link no longer works." in html.unescape(response.content.decode())
    )
    invitation.refresh_from_db()
    assert invitation.sent_at >= before and invitation.send_count == 2
    assert invitation.expires_at == invitation.sent_at + timedelta(days=7)
    old_link, new = links_to("dave@example.com")
    assert client.get(f"/invitations/{old}/").status_code == 404
    assert client.get(f"/invitations/{new}/").status_code == 200
    assert "(2 times)" in client.get("/team/").content.decode()


def test_an_expired_invitation_is_listed_and_can_be_sent_again(client: Any, alice: Any) -> None:
    from datetime import timedelta

    from django.test import TestCase
    from django.utils import timezone

    # given an invitation past its lifetime
    login(client, alice)
    expired = invite(client, "dave@example.com")
    Invitation.objects.update(sent_at=timezone.now() - timedelta(days=8))
    listed = client.get("/team/").content.decode().split('id="invitations"')[1].split("</table>")[0]
    # when alice invites the address again
    with TestCase.captureOnCommitCallbacks(execute=True):
        client.post("/team/", {"email": "dave@example.com", "role": "member"})
    # then the same invitation is pending again, with the new link only
    assert "dave@example.com" in listed and "expired" in listed and "Resend" in listed
    assert client.get(f"/invitations/{expired}/").status_code == 404
    assert Invitation.objects.get().is_pending
    assert client.get(f"/invitations/{links_to('dave@example.com')[-1]}/").status_code == 200


def test_a_void_invitation_resent_by_a_manager_is_valid_again(client: Any, alice: Any, erin: Any) -> None:
    from django.test import TestCase

    # given erin invited dave, then left
    login(client, erin)
    invite(client, "dave@example.com")
    client.post(f"/team/members/{Membership.objects.get(user=erin).pk}/remove")
    invitation = Invitation.objects.get()
    # when alice resends it
    login(client, alice)
    with TestCase.captureOnCommitCallbacks(execute=True):
        client.post(f"/team/invitations/{invitation.pk}/resend")
    # then it is hers, and dave can join
    dave = make_user("dave@example.com")
    login(client, dave)
    client.post(f"/invitations/{links_to('dave@example.com')[-1]}/")
    assert Invitation.objects.get().invited_by == alice
    assert Membership.objects.filter(user=dave).exists()


def test_only_owners_resend_an_owner_invitation(client: Any, alice: Any, erin: Any, alice_org: Any) -> None:
    from apps.accounts import actions

    invitation = actions.invite_member(alice_org, alice, "dave@example.com", Role.OWNER)
    login(client, erin)

    response = client.post(f"/team/invitations/{invitation.pk}/resend", follow=True)

    assert "Only owners can invite owners." in html.unescape(response.content.decode())
    assert Invitation.objects.get().send_count == 1


def test_a_revoked_invitation_cannot_be_resent(client: Any, alice: Any, alice_org: Any) -> None:
    from apps.accounts import actions

    invitation = actions.invite_member(alice_org, alice, "dave@example.com", Role.MEMBER)
    actions.revoke_invitation(alice, invitation)
    login(client, alice)

    response = client.post(f"/team/invitations/{invitation.pk}/resend", follow=True)

    assert (
        "The invitation to dave@example.com was already revoked: there is nothing to send again."
        in html.unescape(response.content.decode())
    )
    assert Invitation.objects.get().send_count == 1


def test_members_cannot_resend_invitations(client: Any, alice: Any, bob: Any, alice_org: Any) -> None:
    from apps.accounts import actions

    invitation = actions.invite_member(alice_org, alice, "dave@example.com", Role.MEMBER)
    login(client, bob)

    response = client.post(f"/team/invitations/{invitation.pk}/resend", follow=True)

    assert "Only owners and admins can do that." in response.content.decode()
    assert Invitation.objects.get().send_count == 1


def test_outsiders_get_404_for_resending_an_invitation(
    client: Any, alice: Any, carol: Any, alice_org: Any
) -> None:
    from apps.accounts import actions

    invitation = actions.invite_member(alice_org, alice, "dave@example.com", Role.MEMBER)
    login(client, carol)

    assert client.post(f"/team/invitations/{invitation.pk}/resend").status_code == 404
    assert Invitation.objects.get().send_count == 1


def test_the_database_holds_one_open_invitation_per_address(alice: Any, alice_org: Any) -> None:
    from django.db import IntegrityError, transaction

    from apps.accounts import actions

    actions.invite_member(alice_org, alice, "dave@example.com", Role.MEMBER)

    with pytest.raises(IntegrityError), transaction.atomic():
        Invitation.objects.create(organization=alice_org, email="DAVE@example.com", token_hash="x" * 64)
