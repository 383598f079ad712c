"""`POST /v1/embeddings` end to end: the official openai SDK (strict) and LangChain's
OpenAIEmbeddings against a live server and a real worker running the real MiniLM-L6; and
`openai:*` embeddings proxied to tests/fake_openai.py."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import CreateEmbeddingResponse

from apps.billing.models import UsageRecord
from apps.billing.pricing import cost_of
from apps.jobs.models import Job
from tests.api.test_batches import content, upload_batch
from tests.api.test_proxy import PLATFORM_KEY, start_worker
from tests.api.test_sdk_serving import sdk
from tests.conftest import Worker, wait_for
from tests.fake_openai import FakeOpenAI, fake_vector

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEXTS = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The quarterly report is due on Friday.",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    from workers.runtime.catalog import minilm_dir

    return minilm_dir()


def reference(minilm_dir: Path, texts: list[str]) -> list[list[float]]:
    """sentence-transformers' recipe for all-MiniLM-L6-v2, computed here with transformers alone:
    the mean of the last hidden states over the attention mask, L2-normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), p=2, dim=1).tolist()


def token_count(minilm_dir: Path, texts: list[str]) -> int:
    from transformers import AutoTokenizer

    return sum(len(ids) for ids in AutoTokenizer.from_pretrained(minilm_dir)(texts)["input_ids"])


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_the_sdk_gets_minilm_embeddings_as_floats_and_base64(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None, minilm_dir: Path
) -> None:
    client = sdk(live_server, alice_key)
    # Strict validation checks the wire body before the SDK decodes base64 into floats, so it
    # refuses every base64 answer (OpenAI's own included): the default request uses a lenient client.
    lenient = openai.OpenAI(base_url=live_server.url + "/v1", api_key=alice_key, max_retries=0, timeout=60)

    # given the SDK's default: it asks for base64 and decodes it itself
    raw = lenient.embeddings.with_raw_response.create(model="minilm-l6", input=TEXTS)
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    assert raw.headers["x-ratelimit-limit-requests"] and raw.headers["x-request-id"]
    wire = raw.http_response.json()
    assert all(isinstance(item["embedding"], str) for item in wire["data"])
    by_default = raw.parse()

    # when floats are asked for by name
    floats = client.embeddings.create(model="minilm-l6", input=TEXTS, encoding_format="float")

    # then both are OpenAI's shape, in input order, and the same numbers
    for response in (by_default, floats):
        assert isinstance(response, CreateEmbeddingResponse)
        assert response.object == "list" and response.model == "minilm-l6"
        assert [item.index for item in response.data] == [0, 1, 2]
        assert all(item.object == "embedding" and len(item.embedding) == 384 for item in response.data)
    assert [item.embedding for item in floats.data] == [item.embedding for item in by_default.data]
    assert set(wire) == {"object", "data", "model", "usage"}
    first = base64.b64decode(wire["data"][0]["embedding"])
    assert list(struct.unpack("<384f", first)) == floats.data[0].embedding  # little-endian float32

    # and they are the sentence-transformers vectors, tokens counted by MiniLM's tokenizer
    for item, want in zip(floats.data, reference(minilm_dir, TEXTS), strict=True):
        assert cosine(item.embedding, want) > 0.9999
    guitar, strumming, report = (item.embedding for item in floats.data)
    assert cosine(guitar, strumming) > cosine(guitar, report) + 0.2
    tokens = token_count(minilm_dir, TEXTS)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens

    # and each request is a job billed for its input tokens at MiniLM's price
    jobs = Job.objects.filter(kind="embedding", status="succeeded")
    assert jobs.count() == 2 and all(job.public_id.startswith("emb-") for job in jobs)
    records = UsageRecord.objects.filter(job__in=jobs)
    assert [(r.unit, r.quantity, r.model_name) for r in records] == [
        ("input_tokens", tokens, "minilm-l6")
    ] * 2
    assert all(r.cost == cost_of("minilm-l6", "input_tokens", tokens) for r in records)


def test_a_single_string_and_dimensions_384_are_accepted(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None, minilm_dir: Path
) -> None:
    client = sdk(live_server, alice_key)

    response = client.embeddings.create(
        model="minilm-l6", input=TEXTS[0], dimensions=384, user="user-1", encoding_format="float"
    )

    [item] = response.data
    assert cosine(item.embedding, reference(minilm_dir, TEXTS[:1])[0]) > 0.9999


def test_an_over_long_input_is_refused_naming_its_index_and_the_limit(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None, minilm_dir: Path
) -> None:
    client = sdk(live_server, alice_key)
    long = "word " * 300
    tokens = token_count(minilm_dir, [long])

    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="minilm-l6", input=["short", long])

    assert raised.value.body == {
        "message": f"input[1] is {tokens} tokens long; minilm-l6 reads at most 256 tokens per input. "
        "Shorten or split it.",
        "type": "invalid_request_error",
        "param": "input[1]",
        "code": "invalid_request",
    }
    job = Job.objects.get(kind="embedding")
    assert job.status == "failed" and not UsageRecord.objects.exists()


def test_langchain_embeds_documents_and_a_query(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None, minilm_dir: Path
) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: LangChain sends the texts themselves, not tiktoken's ids
    embeddings = OpenAIEmbeddings(
        model="minilm-l6",
        base_url=live_server.url + "/v1",
        api_key=alice_key,  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )

    documents = embeddings.embed_documents(TEXTS[:2])
    query = embeddings.embed_query(TEXTS[2])

    expected = reference(minilm_dir, TEXTS)
    assert len(documents) == 2 and all(len(vector) == 384 for vector in documents)
    for got, want in zip([*documents, query], expected, strict=True):
        assert cosine(got, want) > 0.9999


def test_langchains_token_ids_get_a_400_that_says_what_to_set(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None
) -> None:
    client = sdk(live_server, alice_key)

    # what OpenAIEmbeddings sends by default: its texts as tiktoken ids, in arrays
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="minilm-l6", input=[[9906, 1917]])

    assert "check_embedding_ctx_length=False" in raised.value.message
    assert raised.value.body["param"] == "input"  # type: ignore[index]
    assert not Job.objects.exists()


# --- openai:* embeddings, proxied ---------------------------------------------------------------
MODEL = "openai:text-embedding-3-small"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def proxy_worker(transactional_db: None, upstream: FakeOpenAI) -> Iterator[Worker]:
    worker = start_worker(upstream)
    try:
        yield worker
    finally:
        worker.stop()


def test_openai_embeddings_are_relayed_and_billed_as_upstream_counts(
    live_server: Any, alice_key: str, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    client = sdk(live_server, alice_key)

    lenient = openai.OpenAI(base_url=live_server.url + "/v1", api_key=alice_key, max_retries=0, timeout=60)

    # the SDK's default (base64, decoded by the SDK: a lenient client, as above), then floats with
    # fewer dimensions
    by_default = lenient.embeddings.create(model=MODEL, input=["one two", "three"])
    floats = client.embeddings.create(
        model=MODEL, input="one two", encoding_format="float", dimensions=256, user="user-1"
    )
    ids = client.embeddings.create(model=MODEL, input=[[1, 2, 3]], encoding_format="float")

    assert by_default.model == MODEL
    assert [item.embedding for item in by_default.data] == [fake_vector("one two"), fake_vector("three")]
    assert by_default.usage.prompt_tokens == 3
    assert floats.data[0].embedding == fake_vector("one two", 256)
    assert ids.data[0].embedding == fake_vector([1, 2, 3])  # token ids pass through to OpenAI
    calls = [r.body for r in upstream.requests if r.path == "/v1/embeddings"]
    assert calls == [
        {"model": "text-embedding-3-small", "input": ["one two", "three"], "encoding_format": "base64"},
        {
            "model": "text-embedding-3-small",
            "input": "one two",
            "encoding_format": "float",
            "dimensions": 256,
            "user": "user-1",
        },
        {"model": "text-embedding-3-small", "input": [[1, 2, 3]], "encoding_format": "float"},
    ]
    assert all(r.headers["authorization"] == f"Bearer {PLATFORM_KEY}" for r in upstream.requests)
    records = UsageRecord.objects.filter(job__kind="embedding").order_by("job__created_at")
    assert [(r.unit, r.quantity, r.model_name) for r in records] == [
        ("input_tokens", 3, MODEL),
        ("input_tokens", 2, MODEL),
        ("input_tokens", 3, MODEL),
    ]
    assert records[0].cost == cost_of(MODEL, "input_tokens", 3)


def test_an_openai_embeddings_batch_is_relayed_line_by_line(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    lines = [
        {"custom_id": c, "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": text}}
        for c, text in (("a", "one two"), ("b", ["three", "four five six"]))
    ]
    file_id = upload_batch(api, lines)
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    created = api.post(
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"},
        format="json",
    )
    assert created.status_code == 200, created.content
    batch_id = created.json()["id"]

    done = wait_for(
        lambda: (b := api.get(f"/v1/batches/{batch_id}").json())["status"] == "completed" and b, timeout=60
    )

    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    output = {x["custom_id"]: x for x in map(json.loads, content(api, done["output_file_id"]).splitlines())}
    assert output["a"]["response"]["body"]["model"] == MODEL
    assert [i["embedding"] for i in output["b"]["response"]["body"]["data"]] == [
        fake_vector("three"),
        fake_vector("four five six"),
    ]
    assert done["usage"]["input_tokens"] == 6
    sent = sorted(json.dumps(r.body["input"]) for r in upstream.requests if r.path == "/v1/embeddings")
    assert sent == ['"one two"', '["three", "four five six"]']
