"""A small fake of Stripe for what localstripe lacks, speaking Stripe's wire format.

The stripe SDK is pointed at this server (`STRIPE_API_BASE`). It serves Checkout Sessions, Billing
Portal sessions, Billing Meter events, the event list (with `delivery_success`) and any recorded
object it was given (`serve`, for replaying recorded events) itself, and forwards every other
request (customers, subscriptions, invoices, plans...) to localstripe.

Like the real API it replays the first response for a repeated `Idempotency-Key` with the same
parameters, and refuses a second meter event with an `identifier` it already has. It records every
request with its headers, and can be scripted to answer 5xx or to hang (`fail`, `hang`, `recover`).
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

API_VERSION = "2026-10-28.endive"  # what apps.billing.stripe_api pins
# Where Stripe serves each kind of object (`serve`).
COLLECTIONS = {
    "subscription": "subscriptions",
    "invoice": "invoices",
    "customer": "customers",
    "checkout.session": "checkout/sessions",
}


def unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][0][c]=1` → {"a": {"b": [{"c": "1"}]}}, as Stripe decodes form bodies."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        node: Any = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_listify(node[k]) for k in sorted(node, key=int)]
        return {k: _listify(v) for k, v in node.items()}
    return node


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class Script:
    """What the fake does instead of answering: fail with a status, or hang."""

    status: int = 0
    hang_seconds: float = 0.0
    remaining: int | None = None  # None: until recover()
    path_prefix: str = ""


@dataclass
class State:
    requests: list[Request] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    portal_sessions: list[dict[str, Any]] = field(default_factory=list)
    meter_events: dict[str, dict[str, Any]] = field(default_factory=dict)  # identifier -> event
    events: list[dict[str, Any]] = field(default_factory=list)  # newest last
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> recorded object
    delivered: dict[str, bool] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, dict[str, Any], int, bytes]] = field(default_factory=dict)
    script: Script | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out while we "hung" closed the socket: expected, not worth a traceback.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeStripe:
    def __init__(self, localstripe_url: str | None = None) -> None:
        self.localstripe_url = localstripe_url
        self.state = State()
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- Scripting and inspection ------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.state = State()

    def fail(self, status: int = 500, times: int | None = None, path_prefix: str = "") -> None:
        with self.lock:
            self.state.script = Script(status=status, remaining=times, path_prefix=path_prefix)

    def hang(self, seconds: float, times: int | None = None, path_prefix: str = "") -> None:
        with self.lock:
            self.state.script = Script(hang_seconds=seconds, remaining=times, path_prefix=path_prefix)

    def recover(self) -> None:
        with self.lock:
            self.state.script = None

    def requests_to(self, method: str, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.state.requests if r.method == method and r.path == path]

    @property
    def meter_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.meter_events.values())

    def session(self, session_id: str) -> dict[str, Any]:
        with self.lock:
            return self.state.sessions[session_id]

    def complete_checkout(self, session_id: str, card: str = "pm_card_visa") -> dict[str, Any]:
        """What a customer paying on the Checkout page does: a subscription is created (in
        localstripe) and the session completes. Returns the completed session."""
        session = self.session(session_id)
        price = session["line_items"][0]["price"]
        customer = session["customer"]
        localstripe = LocalStripe(self.localstripe_url or "")
        localstripe.attach_card(customer, card)
        subscription = localstripe.post(
            "/v1/subscriptions",
            {
                "customer": customer,
                "items[0][plan]": price,
                "metadata[organization_id]": session["metadata"]["organization_id"],
            },
        )
        with self.lock:
            session.update(status="complete", payment_status="paid", subscription=subscription["id"])
            return dict(session)

    def serve(self, obj: dict[str, Any]) -> None:
        """Answers GET for this object with this copy of it (a recorded object, as Stripe had it at
        that moment) instead of asking localstripe, until it is served again or the fake reset."""
        path = f"/v1/{COLLECTIONS[obj['object']]}/{obj['id']}"
        with self.lock:
            self.state.objects[path] = obj

    def add_event(
        self,
        type: str,
        obj: dict[str, Any],
        *,
        delivered: bool = False,
        created: int | None = None,
        api_version: str = API_VERSION,
    ) -> dict[str, Any]:
        """An event Stripe would list; `delivered` is what `delivery_success` filters on."""
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": api_version,
            "created": created or int(time.time()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 0 if delivered else 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type,
        }
        with self.lock:
            self.state.events.append(event)
            self.state.delivered[event["id"]] = delivered
        return event

    # --- The server --------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        params = unflatten(parse_qsl(split.query, keep_blank_values=True))
        params.update(unflatten(parse_qsl(body.decode(), keep_blank_values=True)))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        request = Request(method, split.path, params, headers)
        with self.lock:
            self.state.requests.append(request)
            script = self.state.script
            if script is not None and split.path.startswith(script.path_prefix):
                if script.remaining is not None:
                    script.remaining -= 1
                    if script.remaining <= 0:
                        self.state.script = None
            else:
                script = None
        if script is not None:
            if script.hang_seconds:
                time.sleep(script.hang_seconds)
                self._send(handler, 504, {"error": {"type": "api_error", "message": "hung"}})
            else:
                self._send(
                    handler, script.status, {"error": {"type": "api_error", "message": "Injected outage."}}
                )
            return

        key = request.idempotency_key
        if method == "POST" and key:
            with self.lock:
                seen = self.state.idempotency.get(key)
            if seen is not None:
                seen_path, seen_params, status, payload = seen
                if (seen_path, seen_params) != (split.path, params):
                    self._send(
                        handler,
                        400,
                        _error(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                        ),
                    )
                else:
                    self._send_raw(handler, status, payload, replayed=True)
                return
        status, payload = self._route(request, split.query, body)
        if method == "POST" and key and status < 500:
            with self.lock:
                self.state.idempotency[key] = (split.path, params, status, payload)
        self._send_raw(handler, status, payload)

    def _route(self, request: Request, query: str, body: bytes) -> tuple[int, bytes]:
        path, method, params = request.path, request.method, request.params
        if method == "POST" and path == "/v1/checkout/sessions":
            return 200, _dump(self._create_session(params))
        match = re.fullmatch(r"/v1/checkout/sessions/([\w]+)", path)
        if method == "GET" and match:
            with self.lock:
                session = self.state.sessions.get(match.group(1))
            if session is None:
                return 404, _dump(_error("resource_missing", f"No such checkout.session: '{match.group(1)}'"))
            return 200, _dump(session)
        if method == "POST" and path == "/v1/billing_portal/sessions":
            portal = {
                "id": f"bps_{secrets.token_hex(8)}",
                "object": "billing_portal.session",
                "customer": params.get("customer"),
                "return_url": params.get("return_url"),
                "url": f"{self.url}/p/session/{secrets.token_hex(8)}",
                "created": int(time.time()),
            }
            with self.lock:
                self.state.portal_sessions.append(portal)
            return 200, _dump(portal)
        if method == "POST" and path == "/v1/billing/meter_events":
            return self._create_meter_event(params)
        if method == "GET" and path == "/v1/events":
            return 200, _dump(self._list_events(params))
        with self.lock:
            recorded = self.state.objects.get(path) if method == "GET" else None
        if recorded is not None:
            return 200, _dump(recorded)
        return self._proxy(request, query, body)

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        session_id = f"cs_test_{secrets.token_hex(12)}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params.get("mode"),
            "customer": params.get("customer"),
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "line_items": params.get("line_items", []),
            "success_url": str(params.get("success_url", "")).replace("{CHECKOUT_SESSION_ID}", session_id),
            "cancel_url": params.get("cancel_url"),
            "status": "open",
            "payment_status": "unpaid",
            "subscription": None,
            "url": f"{self.url}/c/pay/{session_id}",
            "created": int(time.time()),
        }
        with self.lock:
            self.state.sessions[session_id] = session
        return session

    def _create_meter_event(self, params: dict[str, Any]) -> tuple[int, bytes]:
        identifier = params.get("identifier") or f"auto_{secrets.token_hex(8)}"
        with self.lock:
            if identifier in self.state.meter_events:
                return 400, _dump(
                    _error(
                        "resource_already_exists", f"An event already exists with identifier {identifier}."
                    )
                )
            event = {
                "object": "billing.meter_event",
                "created": int(time.time()),
                "event_name": params.get("event_name"),
                "identifier": identifier,
                "livemode": False,
                "payload": params.get("payload", {}),
                "timestamp": int(params.get("timestamp") or time.time()),
            }
            self.state.meter_events[identifier] = event
        return 200, _dump(event)

    def _list_events(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            events = list(reversed(self.state.events))  # newest first, like Stripe
            delivered = dict(self.state.delivered)
        if "delivery_success" in params:
            wanted = params["delivery_success"] == "true"
            events = [e for e in events if delivered[e["id"]] == wanted]
        if "types" in params:
            events = [e for e in events if e["type"] in params["types"]]
        if "type" in params:
            events = [e for e in events if e["type"] == params["type"]]
        gte = (params.get("created") or {}).get("gte")
        if gte is not None:
            events = [e for e in events if e["created"] >= int(gte)]
        if params.get("starting_after"):
            ids = [e["id"] for e in events]
            events = events[ids.index(params["starting_after"]) + 1 :]
        limit = int(params.get("limit") or 10)
        return {
            "object": "list",
            "url": "/v1/events",
            "data": events[:limit],
            "has_more": len(events) > limit,
        }

    def _proxy(self, request: Request, query: str, body: bytes) -> tuple[int, bytes]:
        if not self.localstripe_url:
            return 404, _dump(
                _error("resource_missing", f"Unrecognized request URL ({request.method}: {request.path})")
            )
        target = urlsplit(self.localstripe_url)
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k in ("authorization", "content-type", "stripe-version")
        }
        try:
            connection.request(
                request.method,
                request.path + (f"?{query}" if query else ""),
                body=body or None,
                headers=headers,
            )
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        FakeStripe._send_raw(handler, status, _dump(payload))

    @staticmethod
    def _send_raw(
        handler: BaseHTTPRequestHandler, status: int, payload: bytes, replayed: bool = False
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
        if replayed:
            handler.send_header("Idempotent-Replayed", "true")
        handler.end_headers()
        handler.wfile.write(payload)


def _dump(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "code": code, "message": message}}


class LocalStripe:
    """Test-side setup calls to localstripe (products, plans, cards), over plain HTTP."""

    def __init__(self, url: str, api_key: str = "sk_test_modelworks") -> None:
        self.url = url
        self.api_key = api_key

    def _request(self, method: str, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        from urllib.parse import urlencode
        from urllib.request import Request as UrlRequest
        from urllib.request import urlopen

        body = urlencode(data).encode() if data is not None else None
        req = UrlRequest(
            self.url + path, data=body, method=method, headers={"Authorization": f"Bearer {self.api_key}"}
        )
        with urlopen(req, timeout=10) as response:  # noqa: S310 - a local test server
            text = response.read()
        return json.loads(text) if text else {}

    def post(self, path: str, data: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, data)

    def get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path)

    def delete(self, path: str) -> dict[str, Any]:
        return self._request("DELETE", path)

    def flush(self) -> None:
        self._request("DELETE", "/_config/data")

    def create_price(self, price_id: str, amount_cents: int, name: str) -> None:
        """A plan created through the legacy Plans API is also a price with the same id."""
        self.post("/v1/products", {"id": f"prod_{price_id}", "name": name})
        self.post(
            "/v1/plans",
            {
                "id": price_id,
                "product": f"prod_{price_id}",
                "amount": amount_cents,
                "currency": "usd",
                "interval": "month",
            },
        )

    def attach_card(self, customer: str, card: str = "pm_card_visa") -> str:
        numbers = {"pm_card_visa": "4242424242424242", "pm_card_chargeCustomerFail": "4000000000000341"}
        method = self.post(
            "/v1/payment_methods",
            {
                "type": "card",
                "card[number]": numbers[card],
                "card[exp_month]": "12",
                "card[exp_year]": "2035",
                "card[cvc]": "123",
            },
        )
        self.post(f"/v1/payment_methods/{method['id']}/attach", {"customer": customer})
        self.post(f"/v1/customers/{customer}", {"invoice_settings[default_payment_method]": method["id"]})
        return str(method["id"])


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send, from the SDK's own helper."""
    return stripe.WebhookSignature.generate_signature_header(payload.decode(), secret, timestamp)
