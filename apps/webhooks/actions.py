"""Webhook endpoints and deliveries: every change to them, and the delivery loop.

- `emit` writes the event, and a delivery for each endpoint that wants it, inside the caller's
  transaction (the outbox): a rolled-back change sends nothing. Jobs announce their own statuses
  (`apps.jobs.actions`); a file's validation is announced where it is recorded (`workers/tasks.py`).
- Each new delivery is queued on commit (`default` queue); `send_due` (beat) queues those whose
  retry is due and any whose message was lost. `deliver` claims one with a conditional update, so
  two tasks never send the same delivery at once, and POSTs it signed (Standard Webhooks).
- At-least-once: a delivery is retried with exponential backoff and jitter until a 2xx, for up to
  WEBHOOK_RETRY_WINDOW_SECONDS; every retry carries the same `webhook-id` (the event id).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from apps.accounts.actions import require_manager
from apps.accounts.models import User
from apps.billing import ratelimit
from apps.core import tasks
from apps.core.crypto import decrypt, encrypt
from apps.core.errors import ActionError
from apps.core.mail import single_line
from apps.core.text import escape_unstorable
from apps.projects.models import Project
from apps.webhooks import models as events
from apps.webhooks.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

logger = logging.getLogger(__name__)

MAX_ENDPOINTS_PER_PROJECT = 20
MAX_NAME_LENGTH = 200
MAX_URL_LENGTH = 2048
EXCERPT_CHARS = 1000
USER_AGENT = "Modelworks-Webhooks/1.0"


# --- Events: written in the transaction of the change they announce ------------------------------
def announce_file(project_id: int, file_id: str, processed: bool) -> None:
    """Call inside the transaction that stored the file's validation outcome."""
    emit(project_id, events.FILE_PROCESSED if processed else events.FILE_FAILED, file_id)


def event_body(event_id: str, event_type: str, object_id: str, created_at: datetime) -> str:
    """OpenAI's event shape: the object's id only, never the object (a receiver fetches what it
    needs, and a payload never grows past what a receiver accepts)."""
    body = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created_at": int(created_at.timestamp()),
        "data": {"id": object_id},
    }
    return json.dumps(body, separators=(",", ":"))


def emit(project_id: int, event_type: str, object_id: str) -> WebhookEvent | None:
    """The event and one delivery per enabled endpoint that subscribes to it; nothing when none
    does. Must run inside the transaction that makes the change (the outbox)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("webhook events are written in the transaction of the change they announce")
    endpoints = list(
        WebhookEndpoint.objects.filter(
            project_id=project_id, enabled=True, event_types__contains=[event_type]
        ).values_list("pk", flat=True)
    )
    if not endpoints:
        return None
    now = timezone.now()
    event = WebhookEvent(project_id=project_id, type=event_type)
    event.payload = event_body(event.public_id, event_type, object_id, now)
    event.save()
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(event=event, endpoint_id=pk, next_attempt_at=now, published_at=now)
        for pk in endpoints
    )
    ids = [delivery.pk for delivery in deliveries]
    transaction.on_commit(lambda: _publish(ids))
    return event


def _publish(delivery_ids: list[int]) -> None:
    # With the broker down the sweep sends them once WEBHOOK_REPUBLISH_SECONDS have passed.
    from apps.core.broker import send_now

    for pk in delivery_ids:
        if not send_now(tasks.DELIVER_WEBHOOK, [pk]):
            return


# --- Endpoints ---------------------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_hint(secret: str) -> str:
    return f"whsec_…{secret[-4:]}"


# IPv6 ranges that carry an IPv4 address a router may translate to (NAT64, 6to4, IPv4-compatible):
# Python calls them global, but one can reach 127.0.0.1 or 169.254.169.254 through them.
_EMBEDS_IPV4 = [ipaddress.ip_network(net) for net in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96")]


def _is_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif any(address in net for net in _EMBEDS_IPV4):
            return True
    return not address.is_global or address.is_multicast


def clean_url(raw: Any) -> str:
    """An endpoint URL: HTTPS, public, at most 2,048 characters. Where it resolves is checked again
    at each delivery (a name can be pointed elsewhere after it was saved)."""
    if not isinstance(raw, str) or not raw.strip():
        raise ActionError("url must be a non-empty string.", param="url")
    url = raw.strip()
    if len(url) > MAX_URL_LENGTH:
        raise ActionError(f"url must be at most {MAX_URL_LENGTH} characters.", param="url")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ActionError(f"url is not a valid URL: '{url}'.", param="url") from None
    allowed = {"https", "http"} if settings.WEBHOOK_ALLOW_PRIVATE_URLS else {"https"}
    if parts.scheme not in allowed or not host:
        raise ActionError(
            f"url must be an HTTPS URL, such as https://example.com/webhooks; got '{url}'.", param="url"
        )
    if parts.username is not None or parts.password is not None:
        raise ActionError("url must not contain a user name or password.", param="url")
    if not _is_ip(host) and not _is_host_name(host):
        raise ActionError(f"url has an invalid host name: '{host}'.", param="url")
    if not settings.WEBHOOK_ALLOW_PRIVATE_URLS:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if (
            host == "localhost"
            or host.endswith(".localhost")
            or (literal is not None and _is_private(literal))
        ):
            raise ActionError("url must be a public address, not one on a private network.", param="url")
    return url


def _is_host_name(host: str) -> bool:
    """Encodable for DNS: IDNA, labels of 1 to 63 characters (a trailing dot allowed)."""
    try:
        ascii_host = host.encode("idna").decode()
    except UnicodeError:
        return False
    return all(1 <= len(label) <= 63 for label in ascii_host.removesuffix(".").split("."))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def clean_event_types(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(item, str) for item in raw):
        raise ActionError("event_types must be a non-empty list of event type names.", param="event_types")
    unknown = [item for item in raw if item not in events.EVENT_TYPES]
    if unknown:
        raise ActionError(
            f"Unknown event type '{unknown[0]}'. The event types are: {', '.join(events.EVENT_TYPES)}.",
            param="event_types",
        )
    return [item for item in events.EVENT_TYPES if item in raw]  # one of each, in a stable order


def clean_name(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ActionError("name must be a non-empty string.", param="name")
    if len(raw.strip()) > MAX_NAME_LENGTH:
        raise ActionError(f"name must be at most {MAX_NAME_LENGTH} characters.", param="name")
    return raw.strip()


def _require_manager(actor: User | None, project: Project) -> None:
    if actor is None:
        raise ActionError(
            "Only owners and admins can manage webhook endpoints.", code="permission_denied", status=403
        )
    try:
        require_manager(actor, project.organization)
    except Exception:
        raise ActionError(
            "Only owners and admins can manage webhook endpoints.", code="permission_denied", status=403
        ) from None


def create_endpoint(
    project: Project, actor: User | None, *, name: Any, url: Any, event_types: Any
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret, which is returned this once."""
    _require_manager(actor, project)
    fields = {"name": clean_name(name), "url": clean_url(url), "event_types": clean_event_types(event_types)}
    secret = new_secret()
    with transaction.atomic():
        # Locks the project row: two concurrent creations cannot both pass the count.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if WebhookEndpoint.objects.filter(project=project).count() >= MAX_ENDPOINTS_PER_PROJECT:
            raise ActionError(f"A project can have at most {MAX_ENDPOINTS_PER_PROJECT} webhook endpoints.")
        endpoint = WebhookEndpoint.objects.create(
            project=project,
            created_by=actor,
            secret=encrypt(secret),
            secret_hint=secret_hint(secret),
            **fields,
        )
    return endpoint, secret


def update_endpoint(
    endpoint: WebhookEndpoint, actor: User | None, changes: dict[str, Any]
) -> WebhookEndpoint:
    """Changes name, url, event_types and enabled; `updated_at` moves only when something changed."""
    _require_manager(actor, endpoint.project)
    cleaned: dict[str, Any] = {}
    if "name" in changes:
        cleaned["name"] = clean_name(changes["name"])
    if "url" in changes:
        cleaned["url"] = clean_url(changes["url"])
    if "event_types" in changes:
        cleaned["event_types"] = clean_event_types(changes["event_types"])
    if "enabled" in changes:
        if not isinstance(changes["enabled"], bool):
            raise ActionError("enabled must be true or false.", param="enabled")
        cleaned["enabled"] = changes["enabled"]
        if changes["enabled"]:  # switched back on: its failures so far no longer count
            cleaned["disabled_reason"] = ""
            cleaned["failing_since"] = None
    changed = {name: value for name, value in cleaned.items() if getattr(endpoint, name) != value}
    if changed:
        for name, value in changed.items():
            setattr(endpoint, name, value)
        endpoint.updated_at = timezone.now()
        endpoint.save(update_fields=[*changed, "updated_at"])
    return endpoint


def delete_endpoint(endpoint: WebhookEndpoint, actor: User | None) -> None:
    _require_manager(actor, endpoint.project)
    endpoint.delete()


def rotate_secret(endpoint: WebhookEndpoint, actor: User | None, *, keep_old: bool) -> str:
    """A new secret, returned this once. With `keep_old`, deliveries are signed with both for
    WEBHOOK_SECRET_OVERLAP_SECONDS, so receivers can switch without losing an event."""
    _require_manager(actor, endpoint.project)
    secret = new_secret()
    now = timezone.now()
    with transaction.atomic():
        # NO KEY: deliveries being written to it (foreign-key checks) need not wait, nor it for them.
        locked = WebhookEndpoint.objects.select_for_update(no_key=True).get(pk=endpoint.pk)
        if keep_old:
            locked.previous_secret = locked.secret
            locked.previous_secret_expires_at = now + timedelta(
                seconds=settings.WEBHOOK_SECRET_OVERLAP_SECONDS
            )
        else:
            locked.previous_secret, locked.previous_secret_expires_at = "", None
        locked.secret, locked.secret_hint, locked.updated_at = encrypt(secret), secret_hint(secret), now
        locked.save(
            update_fields=[
                "secret",
                "secret_hint",
                "previous_secret",
                "previous_secret_expires_at",
                "updated_at",
            ]
        )
    endpoint.refresh_from_db()
    return secret


def endpoint_object(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    """OpenAI's `webhook_endpoint`, plus whether it is enabled (and why not)."""
    body: dict[str, Any] = {
        "id": endpoint.public_id,
        "object": "webhook_endpoint",
        "name": endpoint.name,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "created_at": int(endpoint.created_at.timestamp()),
        "updated_at": int(endpoint.updated_at.timestamp()),
        "signing_secret_hint": endpoint.secret_hint,
        "enabled": endpoint.enabled,
    }
    if endpoint.disabled_reason:
        body["disabled_reason"] = endpoint.disabled_reason
    if secret is not None:
        body["signing_secret"] = secret
    return body


# --- Delivery -----------------------------------------------------------------------------------
class UnsafeDestination(Exception):
    """The endpoint's host resolves to an address a webhook must not reach."""


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    error: str = ""
    excerpt: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.status_code is not None and 200 <= self.status_code < 300


def _public_address(host: str, port: int) -> str:
    """The address to connect to, checked now: DNS may have changed since the URL was saved, and
    the connection goes to this very address (no second lookup an attacker could answer)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeDestination(f"could not resolve {host}: {exc.strerror}") from None
    except (UnicodeError, ValueError):  # a name the resolver cannot encode (a label over 63 characters)
        raise UnsafeDestination(f"could not resolve {host}: not a valid host name") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not settings.WEBHOOK_ALLOW_PRIVATE_URLS and any(_is_private(address) for address in addresses):
        raise UnsafeDestination(f"{host} resolves to a private address; webhooks go only to public ones")
    return str(addresses[0])


def signature_header(endpoint: WebhookEndpoint, event: WebhookEvent, timestamp: int) -> str:
    """`v1,<signature>` with the current secret, and with the previous one while it overlaps."""
    keys = [decrypt(endpoint.secret)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > timezone.now():
        keys.append(decrypt(endpoint.previous_secret))
    moment = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(Webhook(key).sign(event.public_id, moment, event.payload) for key in keys)


_CLIENT: httpx.Client | None = None


def _client() -> httpx.Client:
    """One client per process: making one loads the CA bundle (~50 ms a delivery, measured). No
    connection is kept between deliveries: connections are keyed by the address we connect to, and
    one made for an endpoint's name must not carry a request for another name at the same address."""
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = httpx.Client(
            follow_redirects=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )
    return _CLIENT


def post(endpoint: WebhookEndpoint, event: WebhookEvent) -> Outcome:
    """One signed POST; never raises for what the receiver does."""
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event.public_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(endpoint, event, timestamp),
    }
    parts = urlsplit(endpoint.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        address = _public_address(host, port)
    except UnsafeDestination as exc:
        return Outcome(None, took(), error=str(exc))
    netloc = f"[{address}]" if ":" in address else address
    pinned = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
    headers["host"] = parts.netloc.rsplit("@", 1)[-1]
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    deadline = started + timeout
    # Identity: a compressed answer would be inflated in memory (a small gzip body can expand to
    # gigabytes); and only the start of the answer is read, within the deadline.
    headers["accept-encoding"] = "identity"
    try:
        with _client().stream(
            "POST",
            pinned,
            content=event.payload.encode(),
            headers=headers,
            timeout=timeout,
            # TLS is checked against the endpoint's name, not the address we connect to.
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        ) as response:
            code = response.status_code
            start = b""
            for chunk in response.iter_raw():
                start += chunk
                if len(start) >= EXCERPT_CHARS or time.monotonic() > deadline:
                    break  # the rest is never read: closing the response drops the connection
    except httpx.TimeoutException:
        return Outcome(None, took(), error=f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(None, took(), error=escape_unstorable(f"could not connect: {exc}")[:500])
    latency = took()
    excerpt = escape_unstorable(start[:EXCERPT_CHARS].decode("utf-8", "replace"))
    if latency > timeout * 1000:
        return Outcome(
            code, latency, error=f"answered after {latency / 1000:.1f} s, past the {timeout:g} s limit"
        )
    if 300 <= code < 400:
        target = escape_unstorable(response.headers.get("location", ""))
        return Outcome(
            code, latency, error=f"redirected to {target[:300]}; redirects are not followed", excerpt=excerpt
        )
    if not 200 <= code < 300:
        return Outcome(code, latency, error=f"answered {code}", excerpt=excerpt)
    return Outcome(code, latency, excerpt=excerpt)


def backoff_seconds(attempts: int) -> float:
    """Exponential from the base, capped, with half of it random: retries of many deliveries that
    failed together (an endpoint down) do not all come back at once."""
    delay = min(settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempts - 1), settings.WEBHOOK_RETRY_MAX_SECONDS)
    return delay / 2 + random.uniform(0, delay / 2)


def lease_seconds() -> float:
    """How long an attempt holds its delivery: past the task's own hard time limit (workers/tasks.py),
    so the sweep never hands a delivery to a second task while the first may still be sending it."""
    return settings.WEBHOOK_TIMEOUT_SECONDS + 30


def _claim(delivery_pk: int, now: datetime) -> bool:
    lease = now + timedelta(seconds=lease_seconds())
    return bool(
        WebhookDelivery.objects.filter(
            pk=delivery_pk, status=DeliveryStatus.PENDING, next_attempt_at__lte=now, endpoint__enabled=True
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=lease)
    )


def deliver(delivery_pk: int) -> str:
    """The task's body: one attempt of one due delivery. Returns what happened, for the log.

    Whatever goes wrong while sending (the task's soft time limit against an answer that trickles
    in, a bug) is recorded as a failed attempt: the delivery keeps its backoff and its retry window,
    and never goes round unrecorded."""
    if not _claim(delivery_pk, timezone.now()):
        return "not due"
    delivery = (
        WebhookDelivery.objects.select_related("event", "endpoint__project__organization")
        .filter(pk=delivery_pk)
        .first()
    )
    if delivery is None:
        return "deleted"  # its endpoint was deleted after the claim
    started = time.monotonic()
    try:
        outcome = post(delivery.endpoint, delivery.event)
    except Exception as exc:
        logger.warning("webhook delivery %s failed while sending", delivery_pk, exc_info=True)
        took = int((time.monotonic() - started) * 1000)
        what = "no complete answer in time" if isinstance(exc, SoftTimeLimitExceeded) else "sending failed"
        outcome = Outcome(None, took, error=what)
    attempt = record(delivery, outcome)
    if attempt is None:
        return "deleted"
    return "delivered" if outcome.ok else outcome.error


def record(delivery: WebhookDelivery, outcome: Outcome) -> WebhookAttempt | None:
    """The attempt in the log, and what comes next: done, a retry at its time, or given up. None
    when the delivery is gone (its endpoint was deleted while it was being sent)."""
    now = timezone.now()
    with transaction.atomic():
        locked = (
            WebhookDelivery.objects.select_for_update().select_related("event").filter(pk=delivery.pk).first()
        )
        if locked is None:
            return None
        locked.attempts += 1
        locked.claimed_until = None
        locked.published_at = None
        if outcome.ok:
            locked.status, locked.delivered_at, locked.next_attempt_at = DeliveryStatus.DELIVERED, now, None
        else:
            retry_at = now + timedelta(seconds=backoff_seconds(locked.attempts))
            closes = locked.event.created_at + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS)
            if locked.event.is_test or retry_at > closes:
                locked.status, locked.next_attempt_at = DeliveryStatus.FAILED, None
            else:
                locked.next_attempt_at = retry_at
        locked.save()
        attempt = WebhookAttempt.objects.create(
            delivery=locked,
            number=locked.attempts,
            started_at=now - timedelta(milliseconds=outcome.latency_ms),
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            error=outcome.error[:500],
            response_excerpt=outcome.excerpt,
            next_attempt_at=locked.next_attempt_at,
        )
        if not locked.event.is_test:
            _track_health(delivery.endpoint_id, outcome.ok, now)
    return attempt


def _track_health(endpoint_pk: int, ok: bool, now: datetime) -> None:
    """Conditional UPDATEs, no SELECT ... FOR UPDATE: a FOR UPDATE lock on the endpoint waits for
    every transaction that has just written a delivery to it (their foreign-key checks hold a KEY
    SHARE lock), and with several workers that deadlocked (seen in bench/outbound_webhooks.py)."""
    endpoints = WebhookEndpoint.objects.filter(pk=endpoint_pk)
    if ok:
        endpoints.filter(failing_since__isnull=False).update(failing_since=None)
        return
    endpoints.filter(failing_since__isnull=True).update(failing_since=now)
    given_up = now - timedelta(seconds=settings.WEBHOOK_DISABLE_AFTER_SECONDS)
    failing = (
        endpoints.filter(enabled=True, failing_since__lte=given_up)
        .values_list("failing_since", flat=True)
        .first()
    )
    if failing is None:
        return
    since = failing.strftime("%Y-%m-%d %H:%M UTC")
    reason = f"Disabled automatically: every delivery has failed since {since}."
    if endpoints.filter(enabled=True).update(enabled=False, disabled_reason=reason):
        transaction.on_commit(
            lambda: _email_disabled(endpoints.select_related("project__organization").get())
        )


def _email_disabled(endpoint: WebhookEndpoint) -> None:
    from apps.billing.actions import managers_emails

    project = endpoint.project
    link = settings.SITE_URL + reverse(
        "dashboard:webhook", kwargs={"project_id": project.public_id, "endpoint_id": endpoint.public_id}
    )
    try:
        send_mail(
            subject=f"Webhook endpoint {single_line(endpoint.name)} was disabled",
            message=(
                f"Deliveries to {endpoint.url} (project {project.name}) have failed for "
                f"{settings.WEBHOOK_DISABLE_AFTER_SECONDS / 86400:g} days, so we stopped sending to it.\n\n"
                f"{endpoint.disabled_reason}\n\nSee the delivery log and switch it back on: {link}"
            ),
            from_email=None,
            recipient_list=managers_emails(project.organization),
        )
    except Exception:
        logger.exception("could not email that webhook endpoint %s was disabled", endpoint.public_id)


def send_due(now: datetime | None = None, limit: int = 1000) -> int:
    """The beat's sweep: queues deliveries whose retry is due, and any queued long ago whose task
    never ran (a lost message). Marking them published first keeps the next sweep from queueing
    them again while they wait in the queue."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.WEBHOOK_REPUBLISH_SECONDS)
    due = list(
        WebhookDelivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lte=now, endpoint__enabled=True
        )
        .filter(Q(published_at__isnull=True) | Q(published_at__lt=stale))
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    if due:
        WebhookDelivery.objects.filter(pk__in=due).update(published_at=now)
        _publish(due)
    _prune(now)
    return len(due)


def _prune(now: datetime, batch: int = 1000) -> int:
    """Events past WEBHOOK_RETENTION_DAYS go, with their deliveries and attempt logs (their retry
    window closed long before), a batch per sweep so no sweep runs long."""
    cutoff = now - timedelta(days=settings.WEBHOOK_RETENTION_DAYS)
    old = list(WebhookEvent.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:batch])
    if not old:
        return 0
    WebhookEvent.objects.filter(pk__in=old).delete()
    return len(old)


def resend(delivery: WebhookDelivery, actor: User | None) -> WebhookDelivery:
    """Sends a delivery again now (delivered or given up), with its same `webhook-id`."""
    _require_manager(actor, delivery.endpoint.project)
    _take_send_allowance(delivery.endpoint.project)
    now = timezone.now()
    with transaction.atomic():
        resent = (
            WebhookDelivery.objects.filter(pk=delivery.pk)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .update(status=DeliveryStatus.PENDING, next_attempt_at=now, published_at=now)
        )
        if not resent:
            raise ActionError("This delivery is being sent right now; its attempt will show in the log.")
        transaction.on_commit(lambda: _publish([delivery.pk]))
    delivery.refresh_from_db()
    return delivery


SAMPLE_IDS = {"fine_tuning": "ftjob-", "batch": "batch_", "file": "file-", "eval": "evalrun_"}
# Test events are sent from the web process: a few threads at most, whatever the receivers do.
_TEST_SENDERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-test")


def _take_send_allowance(project: Project) -> None:
    """Test events and resends go out on request, to a URL the customer chose: a few a minute."""
    limit = settings.WEBHOOK_MANUAL_SENDS_PER_MINUTE
    decision = ratelimit.take(f"webhook-sends:{project.organization_id}", limit, window=60)
    if not decision.allowed:
        wait = max(1, int(decision.reset_seconds + 0.999))
        raise ActionError(
            f"At most {limit} test events and resends a minute per organization; try again in {wait} s.",
            code="rate_limit_exceeded",
            status=429,
        )


def send_test(endpoint: WebhookEndpoint, actor: User | None, event_type: Any) -> WebhookAttempt:
    """A sample event of `event_type`, sent at once and once, and logged like any delivery. The
    request waits at most the delivery timeout (and a second), however slowly the receiver answers."""
    _require_manager(actor, endpoint.project)
    if not isinstance(event_type, str) or event_type not in events.EVENT_TYPES:
        raise ActionError(f"event_type must be one of: {', '.join(events.EVENT_TYPES)}.", param="event_type")
    _take_send_allowance(endpoint.project)
    prefix = SAMPLE_IDS[event_type.split(".", 1)[0]]
    with transaction.atomic():
        event = WebhookEvent(project=endpoint.project, type=event_type, is_test=True)
        event.payload = event_body(event.public_id, event_type, f"{prefix}test", timezone.now())
        event.save()
        delivery = WebhookDelivery.objects.create(event=event, endpoint=endpoint, next_attempt_at=None)
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    started = time.monotonic()
    sending = _TEST_SENDERS.submit(post, endpoint, event)
    try:
        outcome = sending.result(timeout=timeout + 1)
    except FutureTimeout:
        took = int((time.monotonic() - started) * 1000)
        outcome = Outcome(None, took, error=f"no complete answer within {timeout:g} s")
    attempt = record(delivery, outcome)
    if attempt is None:
        raise ActionError("The webhook endpoint was deleted while the test event was sent.", status=404)
    return attempt
