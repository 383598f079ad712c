"""A small local HTTP server that speaks the OpenAI wire format, for tests.

Point the real `openai` SDK at it (`base_url=fake.base_url`). Unscripted requests get a
normal answer (chat or legacy completion, streamed when the request asks for a stream;
embeddings, as floats or base64);
`script([...])` queues exact responses for the next requests: errors with headers,
streams cut off half-way, or a hang past the client's timeout. Every request received is
recorded in `.requests`.

    with FakeOpenAI() as fake:
        fake.script([rate_limited(), None])   # a 429, then a normal answer
        client = openai.OpenAI(api_key="sk-test", base_url=fake.base_url)
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

DEFAULT_REPLY = "This is a fake reply."
CREATED = 1_726_012_687


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # e.g. "/v1/chat/completions"
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None


@dataclass(frozen=True)
class FakeResponse:
    status: int = 200
    body: dict[str, Any] | None = None  # a JSON body
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[dict[str, Any]] | None = None  # a server-sent-event stream, then `data: [DONE]`
    cut_after: int | None = None  # stream: drop the connection after this many chunks, no [DONE]
    delay_s: float = 0.0  # wait this long before answering (to outlast the client's timeout)
    raw: bytes | None = None  # a body sent as it is (a file's content), instead of `body`


# A script entry of None means "answer normally", as for an unscripted request.
ScriptEntry = FakeResponse | None


# ---------------------------------------------------------------------------------------------
# Response builders
# ---------------------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    content: str = DEFAULT_REPLY,
    model: str = "gpt-4o-mini",
    prompt_tokens: int = 9,
    completion_tokens: int = 5,
    finish_reason: str = "stop",
) -> FakeResponse:
    return FakeResponse(
        body={
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, completion_tokens),
        }
    )


def _pieces(text: str) -> list[str]:
    # One piece per word (with its leading space), roughly how OpenAI streams tokens.
    words = text.split(" ")
    return [words[0], *(" " + word for word in words[1:])] if text else []


def chat_chunks(
    content: str = DEFAULT_REPLY,
    model: str = "gpt-4o-mini",
    prompt_tokens: int = 9,
    include_usage: bool = True,
    cut_after: int | None = None,
) -> FakeResponse:
    pieces = _pieces(content)
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED, "model": model}
    extra = {"usage": None} if include_usage else {}

    def make(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            **chunk,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }

    chunks = [make({"role": "assistant", "content": ""}, None)]
    chunks += [make({"content": piece}, None) for piece in pieces]
    chunks.append(make({}, "stop"))
    if include_usage:
        chunks.append({**chunk, "choices": [], "usage": usage(prompt_tokens, len(pieces))})
    return FakeResponse(chunks=chunks, cut_after=cut_after)


def completion(
    text: str = DEFAULT_REPLY, model: str = "gpt-3.5-turbo-instruct", prompt_tokens: int = 4
) -> FakeResponse:
    return FakeResponse(
        body={
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage(prompt_tokens, len(_pieces(text))),
        }
    )


def completion_chunks(
    text: str = DEFAULT_REPLY,
    model: str = "gpt-3.5-turbo-instruct",
    prompt_tokens: int = 4,
    include_usage: bool = True,
    cut_after: int | None = None,
) -> FakeResponse:
    pieces = _pieces(text)
    chunk = {"id": "cmpl-fake", "object": "text_completion", "created": CREATED, "model": model}
    chunks = [
        {**chunk, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
        for piece in pieces
    ]
    chunks.append({**chunk, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]})
    if include_usage:
        chunks.append({**chunk, "choices": [], "usage": usage(prompt_tokens, len(pieces))})
    return FakeResponse(chunks=chunks, cut_after=cut_after)


EMBEDDING_DIMENSIONS = 1536


def fake_vector(item: Any, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit-length vector for a text (or an array of token ids): a test can compute
    what the fake answers."""
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    raw = [(seed[i % len(seed)] - 127.5) / 127.5 + i / dimensions for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw))
    # Rounded through float32, as OpenAI's vectors are.
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *[x / norm for x in raw])))


def embeddings(body: dict[str, Any]) -> FakeResponse:
    """OpenAI's CreateEmbeddingResponse for a request: `fake_vector` per input, base64 when asked
    (little-endian float32), a token a word (a token id each for arrays of ids)."""
    value = body.get("input")
    items = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
    dimensions = int(body.get("dimensions") or EMBEDDING_DIMENSIONS)
    data = []
    for index, item in enumerate(items):
        vector: Any = fake_vector(item, dimensions)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(len(item) if isinstance(item, list) else _count_words(item) for item in items)
    return FakeResponse(
        body={
            "object": "list",
            "data": data,
            "model": str(body.get("model")),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def error(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> FakeResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return FakeResponse(status=status, body=body, headers=headers or {})


def rate_limited(retry_after_ms: int = 20) -> FakeResponse:
    return error(
        429,
        "Rate limit reached for requests",
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after-ms": str(retry_after_ms), "retry-after": "1"},
    )


def server_error() -> FakeResponse:
    return error(500, "The server had an error while processing your request.", type="server_error")


def hang(seconds: float = 30.0) -> FakeResponse:
    """Answer only after `seconds` (or when the server stops): longer than the client's timeout."""
    return FakeResponse(delay_s=seconds, body=chat_completion().body)


# ---------------------------------------------------------------------------------------------
# Default answers for unscripted requests
# ---------------------------------------------------------------------------------------------


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        return _count_words(value.get("content", "")) + _count_words(value.get("text", ""))
    return 0


def default_response(path: str, body: Any) -> FakeResponse:
    body = body if isinstance(body, dict) else {}
    model = str(body.get("model", "gpt-4o-mini"))
    streamed = bool(body.get("stream"))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if path.endswith("/chat/completions"):
        prompt_tokens = max(1, _count_words(body.get("messages", [])))
        if streamed:
            return chat_chunks(model=model, prompt_tokens=prompt_tokens, include_usage=include_usage)
        return chat_completion(model=model, prompt_tokens=prompt_tokens)
    if path.endswith("/completions"):
        prompt_tokens = max(1, _count_words(body.get("prompt", "")))
        if streamed:
            return completion_chunks(model=model, prompt_tokens=prompt_tokens, include_usage=include_usage)
        return completion(model=model, prompt_tokens=prompt_tokens)
    if path.endswith("/embeddings"):
        return embeddings(body)
    if path.endswith("/models"):
        models = [{"id": "gpt-4o-mini", "object": "model", "created": CREATED, "owned_by": "openai"}]
        return FakeResponse(body={"object": "list", "data": models})
    return error(404, f"Unknown path {path}", code="unknown_url")


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the SDK expects
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; requests are recorded instead

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        response = self.server.fake.record_and_pick(RecordedRequest(self.command, self.path, headers, body))
        try:
            if response.delay_s and self.server.fake.stopping.wait(response.delay_s):
                return  # the server is shutting down: give up on this answer
            self._send(response)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing left to answer

    def _send(self, response: FakeResponse) -> None:
        if response.chunks is not None:
            self._send_stream(response)
            return
        payload = response.raw if response.raw is not None else json.dumps(response.body or {}).encode()
        self.send_response(response.status)
        self._common_headers(
            response, "application/octet-stream" if response.raw is not None else "application/json"
        )
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _common_headers(self, response: FakeResponse, content_type: str) -> None:
        self.send_header("content-type", content_type)
        self.send_header("x-request-id", f"req_fake_{next(self.server.fake.request_ids)}")
        for name, value in response.headers.items():
            self.send_header(name, value)

    def _send_stream(self, response: FakeResponse) -> None:
        self.send_response(response.status)
        self._common_headers(response, "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunks = response.chunks or []
        for sent, chunk in enumerate(chunks):
            if response.cut_after is not None and sent >= response.cut_after:
                self._drop_connection()
                return
            self._write_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _drop_connection(self) -> None:
        # No terminating chunk and no [DONE]: to the client this is a connection lost mid-body.
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not block shutdown
    fake: FakeOpenAI


class FakeOpenAI:
    """A scripted OpenAI stand-in on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(self, responder: Callable[[str, Any], FakeResponse | None] | None = None) -> None:
        # responder(path, body) answers unscripted requests (None: the normal answer), e.g. a
        # reply computed from the prompt.
        self.responder = responder
        self.requests: list[RecordedRequest] = []
        self.stopping = threading.Event()
        self.request_ids = itertools.count(1)
        self._script: deque[ScriptEntry] = deque()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, responses: list[ScriptEntry]) -> FakeOpenAI:
        """Queue responses for the next requests, in order; None answers normally."""
        with self._lock:
            self._script.extend(responses)
        return self

    def record_and_pick(self, request: RecordedRequest) -> FakeResponse:
        with self._lock:
            self.requests.append(request)
            scripted = self._script.popleft() if self._script else None
        if scripted is None and self.responder is not None:
            scripted = self.responder(request.path, request.body)
        return scripted or default_response(request.path, request.body)

    def __enter__(self) -> FakeOpenAI:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        # A short poll interval: shutdown() waits up to one interval, at every test's teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stopping.set()  # release handlers waiting in hang()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.requests)


# ---------------------------------------------------------------------------------------------
# An organization's fine-tuning at OpenAI: its jobs and files, as the API lists and serves them
# ---------------------------------------------------------------------------------------------


@dataclass
class FakeAccount:
    """Fine-tuning jobs, files and fine-tuned models of one OpenAI organization, answered as OpenAI's
    API answers them (`responder` for FakeOpenAI): lists paginated with `limit` and `after`, a deleted file
    answering 404, a file's content as raw bytes."""

    jobs: list[dict[str, Any]] = field(default_factory=list)  # newest first, as OpenAI lists them
    files: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict)
    # The fine-tuned models that still answer chats, each answering from the chat's messages (a text,
    # or a response such as an error); any other model answers 404 as a model OpenAI shut down does.
    models: dict[str, Callable[[list[dict[str, Any]]], str | FakeResponse]] = field(default_factory=dict)

    def add_file(
        self, file_id: str, content: bytes, filename: str = "train.jsonl", purpose: str = "fine-tune"
    ) -> str:
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": CREATED,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = (meta, content)
        return file_id

    def respond(self, path: str, body: Any) -> FakeResponse | None:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        route = parts.path
        if route == "/v1/fine_tuning/jobs":
            return self._page(self.jobs, query)
        if route.startswith("/v1/fine_tuning/jobs/"):
            job = next((j for j in self.jobs if j["id"] == route.rsplit("/", 1)[-1]), None)
            if job is None:
                return error(404, f"Could not find fine-tune: {route.rsplit('/', 1)[-1]}", code="not_found")
            return FakeResponse(body=job)
        if route == "/v1/chat/completions" and isinstance(body, dict):
            model = str(body.get("model"))
            if model not in self.models:
                return error(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    code="model_not_found",
                )
            answer = self.models[model](body.get("messages") or [])
            return answer if isinstance(answer, FakeResponse) else chat_completion(answer, model=model)
        if route == "/v1/files":
            rows = [meta for meta, _ in reversed(self.files.values())]  # newest first, as OpenAI lists
            return self._page([r for r in rows if r["purpose"] == query.get("purpose", r["purpose"])], query)
        if route.startswith("/v1/files/"):
            file_id = route.split("/")[3]
            if file_id not in self.files:
                return error(404, f"No such File object: {file_id}", code="not_found")
            meta, content = self.files[file_id]
            return FakeResponse(raw=content) if route.endswith("/content") else FakeResponse(body=meta)
        return None

    def _page(self, rows: list[dict[str, Any]], query: dict[str, str]) -> FakeResponse:
        limit = int(query.get("limit", "20"))
        start = 0
        if "after" in query:
            start = next((i + 1 for i, row in enumerate(rows) if row["id"] == query["after"]), len(rows))
        page = rows[start : start + limit]
        return FakeResponse(body={"object": "list", "data": page, "has_more": start + limit < len(rows)})


def fine_tuning_job(
    job_id: str,
    training_file: str,
    *,
    validation_file: str | None = None,
    method: dict[str, Any] | None = None,
    status: str = "succeeded",
    fine_tuned_model: str | None = None,
    seed: int = 42,
    integrations: list[Any] | None = None,
) -> dict[str, Any]:
    """A fine-tuning job as OpenAI's API shows it."""
    method = method or {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}},
    }
    hyperparameters = (method.get(method["type"]) or {}).get("hyperparameters") or {}
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": CREATED,
        "finished_at": CREATED + 600 if status == "succeeded" else None,
        "model": "gpt-4o-mini-2024-07-18",
        "fine_tuned_model": fine_tuned_model,
        "organization_id": "org-fake",
        "status": status,
        "training_file": training_file,
        "validation_file": validation_file,
        "hyperparameters": hyperparameters,
        "method": method,
        "seed": seed,
        "trained_tokens": 1234 if status == "succeeded" else None,
        "result_files": [],
        "integrations": integrations,
        "error": None,
        "metadata": None,
    }
