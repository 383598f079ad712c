"""Distillation end to end with a real worker: a teacher labels texts, a tiny student learns them,
and the job reports how the two compare. Teachers: a fine-tuned classifier (soft targets), an
`openai:*` model through the proxy (a local OpenAI stand-in answering from the prompt), and a
local generation model whose answers are unusable."""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage

from apps.billing.models import UsageRecord
from apps.jobs.models import Job, JobEvent
from apps.registry.models import Model
from tests.api.test_proxy import NO_KEY, start_worker
from tests.conftest import POSITIVE, TINY_DIR, Worker, billed, sentiment_csv, wait_for
from tests.fake_openai import FakeOpenAI, FakeResponse, chat_completion
from tests.jobs.test_fine_tune_flow import upload
from tests.jobs.test_worker_faults import SLOW_JOB

pytestmark = pytest.mark.integration

STUDENT_HP = {"n_epochs": 10, "batch_size": 8, "learning_rate": 0.003}
TEACHER_MODEL = "openai:gpt-4o-mini"
UNSURE = "Hard to say, maybe positive?"  # what the stand-in teacher answers about texts with "day"


@pytest.fixture(scope="session")
def sentiment_teacher_dir(tiny_bert_dir: Path) -> Path:
    """A tiny BERT fine-tuned on the toy sentiment set (built once, then reused)."""
    from workers.runtime.specs import Hyperparameters, TrainSpec
    from workers.runtime.training import train

    path = TINY_DIR / "sentiment-teacher"
    if not (path / "model.safetensors").exists():
        work = Path(tempfile.mkdtemp(dir=TINY_DIR))
        data = work / "train.csv"
        data.write_bytes(sentiment_csv(160, seed=1))
        hp = Hyperparameters(n_epochs=10, batch_size=8, learning_rate=3e-3, early_stopping_patience=0)
        spec = TrainSpec(
            job_id="ftjob-teacher",
            base_model_dir=str(tiny_bert_dir),
            training_file=str(data),
            output_dir=str(work / "model"),
            hyperparameters=hp,
        )
        result = train(spec, lambda _: None, lambda: False)
        assert result.metrics["accuracy"] >= 0.9, result.metrics
        os.replace(work / "model", path)  # whole, or not at all
    return path


@pytest.fixture
def sentiment_teacher(alice_org: Any, sentiment_teacher_dir: Path) -> Model:
    return Model.objects.create(
        name="ft:tiny-bert:acme:sentiment:ftjob-t",
        organization=alice_org,
        task="classification",
        artifact_key=f"local:{sentiment_teacher_dir}",
        labels=["negative", "positive"],
        context_length=128,
        limits={"servable": True},
    )


def unlabelled(data: bytes) -> bytes:
    """The same texts without their label column."""
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    return ("text\n" + "".join(f"{row['text']}\n" for row in rows)).encode()


def start_distillation(api: Any, file_id: str, **section: Any) -> str:
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    hp = section.pop("hyperparameters", STUDENT_HP)
    max_cost = section.pop("max_cost", None)
    body = {
        "model": "tiny-bert",
        "training_file": file_id,
        "suffix": "student",
        "seed": 7,
        "method": {"type": "distillation", "distillation": {**section, "hyperparameters": hp}},
    }
    if max_cost is not None:
        body["max_cost"] = max_cost
    response = api.post("/v1/fine_tuning/jobs", body, format="json")
    assert response.status_code == 200, response.content
    return str(response.json()["id"])


def finished(api: Any, job_id: str, timeout: float = 180) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (body := api.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"]
            in ("succeeded", "failed", "cancelled")
            and body
        ),
        timeout=timeout,
    )


def usage(job_id: str) -> dict[str, tuple[str, int, int]]:
    """unit → (model, quantity, cost), over the unit's records (work is billed as it is done)."""
    quantities = billed(Job.objects.get(public_id=job_id))
    found: dict[str, tuple[str, int, int]] = {}
    for r in UsageRecord.objects.filter(job__public_id=job_id):
        model, _, cost = found.get(r.unit, (r.model_name, 0, 0))
        assert model == r.model_name
        found[r.unit] = (model, quantities[r.unit], cost + r.cost)
    return found


def file_rows(api: Any, file_id: str) -> list[dict[str, str]]:
    content = b"".join(api.get(f"/v1/files/{file_id}/content").streaming_content).decode()
    return list(csv.DictReader(io.StringIO(content)))


def no_label_chunks_left(job_id: str, org: Any) -> bool:
    try:
        _, files = default_storage.listdir(f"distill/{org.public_id}/{job_id}")
    except FileNotFoundError:
        return True
    return not files


# --- a classifier teacher --------------------------------------------------------------------------


def test_a_classifier_teacher_is_distilled_into_a_student_that_agrees_with_it(
    api: Any, celery_worker: Worker, student_base: Model, sentiment_teacher: Model, alice_org: Any
) -> None:
    # texts with labels of their own: the labels only score teacher and student
    file_id = upload(api, sentiment_csv(200, seed=3))
    job_id = start_distillation(api, file_id, teacher=sentiment_teacher.name)

    done = finished(api, job_id)

    assert done["status"] == "succeeded", done["error"]
    report = done["distillation"]
    assert report["teacher"] == sentiment_teacher.name
    assert report["held_out_texts"] == 20 == report["texts_with_labels"]
    assert report["agreement"] >= 0.9, report
    assert report["teacher_accuracy"] >= 0.9 and report["student_accuracy"] >= 0.85, report
    assert report["unparseable_answers"] == 0 and report["labelled_texts"] == 200
    assert report["teacher_texts_per_second"] > 0 and report["student_texts_per_second"] > 0
    assert report["teacher_cost_per_1000_texts"] > 0 and report["student_cost_per_1000_texts"] > 0
    # the teacher's labelling is billed at the teacher's prices, the training at the student's
    billed = usage(job_id)
    assert billed["classified_texts"][:2] == (sentiment_teacher.name, 200)
    assert billed["input_tokens"][0] == sentiment_teacher.name
    assert billed["trained_tokens"][:2] == ("tiny-bert", done["trained_tokens"])
    assert report["teacher_cost"] == billed["classified_texts"][2] + billed["input_tokens"][2]
    # every text is in the labels report; the held-out ones carry the student's label
    results, _, labels_id = done["result_files"]
    rows = file_rows(api, labels_id)
    assert len(rows) == 200 and all(row["parsed"] == "yes" for row in rows)
    held = [row for row in rows if row["held_out"] == "yes"]
    assert len(held) == 20 and all(row["student_label"] in ("negative", "positive") for row in held)
    assert {row["label"] for row in rows} == {"negative", "positive"}
    assert no_label_chunks_left(job_id, alice_org)
    # the student answers like any fine-tuned classifier
    student = done["fine_tuned_model"]
    answer = api.post("/v1/classifications", {"model": student, "input": ["a wonderful day"]}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["data"][0]["labels"][0]["label"] in ("negative", "positive")


def test_a_tiny_temperature_trains_on_the_teachers_top_labels_and_pays_the_teacher(
    api: Any, celery_worker: Worker, student_base: Model, sentiment_teacher: Model
) -> None:
    # given the smallest temperature the API takes (it takes any number above 0)
    file_id = upload(api, unlabelled(sentiment_csv(80, seed=4)))
    job_id = start_distillation(api, file_id, teacher=sentiment_teacher.name, temperature=5e-324)

    done = finished(api, job_id)

    # then the student learns the teacher's labels as they are (not NaN targets that failed the job
    # after the teacher had labelled every text, which billed nothing), and the teacher is paid
    assert done["status"] == "succeeded", done["error"]
    assert done["distillation"]["labelled_texts"] == 80
    assert usage(job_id)["classified_texts"][:2] == (sentiment_teacher.name, 80)


# --- a teacher behind the OpenAI proxy ---------------------------------------------------------------


def sentiment_answer(path: str, body: Any) -> FakeResponse | None:
    """The stand-in teacher: reads the text out of our labelling prompt and names its sentiment;
    texts with "day" in them get an answer that names no single label."""
    if not path.endswith("/chat/completions"):
        return None
    text = re.search(r"Text: (.*)\n\nAnswer with the label only\.", body["messages"][-1]["content"], re.S)
    assert text is not None, body
    words = set(text.group(1).split())
    if "day" in words:
        return chat_completion(UNSURE, prompt_tokens=40, completion_tokens=6)
    label = "positive" if words & set(POSITIVE) else "negative"
    return chat_completion(f"{label.title()}.", prompt_tokens=40, completion_tokens=2)


@pytest.fixture
def teacher_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(responder=sentiment_answer) as fake:
        yield fake


@pytest.fixture
def proxy_teacher_worker(transactional_db: None, teacher_upstream: FakeOpenAI) -> Iterator[Worker]:
    worker = start_worker(teacher_upstream)
    try:
        yield worker
    finally:
        worker.stop()


def texts_with_day(data: bytes) -> int:
    return sum("day" in line.split(",")[0].split() for line in data.decode().splitlines()[1:])


def labelling_calls(fake: FakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


def test_an_openai_teacher_labels_through_the_proxy_and_bad_answers_are_reported(
    api: Any,
    proxy_teacher_worker: Worker,
    teacher_upstream: FakeOpenAI,
    student_base: Model,
    pro: Any,
    catalog: None,
) -> None:
    data = sentiment_csv(150, seed=4)
    unsure = texts_with_day(data)
    assert 0 < unsure < 100
    file_id = upload(api, unlabelled(data))
    job_id = start_distillation(api, file_id, teacher=TEACHER_MODEL, labels=["positive", "negative"])

    done = finished(api, job_id)

    assert done["status"] == "succeeded", done["error"]
    report = done["distillation"]
    assert report["unparseable_answers"] == unsure
    assert report["labelled_texts"] == 150 - unsure
    assert report["teacher_accuracy"] is None  # the file has no labels of its own
    assert report["agreement"] >= 0.85, report
    # one request per text, deterministic, for the upstream model
    calls = labelling_calls(teacher_upstream)
    assert len(calls) == 150
    assert {(c.body["model"], c.body["temperature"]) for c in calls} == {("gpt-4o-mini", 0)}
    # the unparseable answers are in the report, word for word, and left out of training
    rows = file_rows(api, done["result_files"][-1])
    bad = [row for row in rows if row["parsed"] == "no"]
    assert len(bad) == unsure and {row["teacher_answer"] for row in bad} == {UNSURE}
    assert all(row["teacher_label"] == "" for row in bad)
    message = (
        f"The teacher labelled {150 - unsure} of 150 texts; {unsure} answers named no label and are left out."
    )
    assert JobEvent.objects.filter(job__public_id=job_id, message=message).exists()
    # billed as the upstream reported it, at the proxied model's prices
    billed = usage(job_id)
    assert billed["input_tokens"][:2] == (TEACHER_MODEL, 40 * 150)
    assert billed["output_tokens"][:2] == (TEACHER_MODEL, 6 * unsure + 2 * (150 - unsure))


def test_an_organization_key_that_cannot_be_read_fails_the_teacher_instead_of_using_the_platforms(
    api: Any,
    proxy_teacher_worker: Worker,
    teacher_upstream: FakeOpenAI,
    student_base: Model,
    pro: Any,
    catalog: None,
    alice_org: Any,
) -> None:
    from cryptography.fernet import Fernet

    alice_org.openai_api_key_encrypted = (
        Fernet(Fernet.generate_key()).encrypt(b"sk-org-0123456789abcdef").decode()
    )
    alice_org.save(update_fields=["openai_api_key_encrypted"])
    file_id = upload(api, unlabelled(sentiment_csv(40, seed=4)))
    job_id = start_distillation(api, file_id, teacher=TEACHER_MODEL, labels=["positive", "negative"])

    done = finished(api, job_id)

    assert done["status"] == "failed"
    assert done["error"]["code"] == "openai_key_unreadable"
    assert done["error"]["message"].startswith("Your organization's stored OpenAI key cannot be read")
    assert labelling_calls(teacher_upstream) == []


def test_without_any_openai_key_the_teacher_fails_saying_where_to_add_one(
    api: Any,
    teacher_upstream: FakeOpenAI,
    student_base: Model,
    pro: Any,
    catalog: None,
    transactional_db: None,
) -> None:
    worker = start_worker(teacher_upstream, platform_key="")
    try:
        file_id = upload(api, unlabelled(sentiment_csv(40, seed=4)))
        job_id = start_distillation(api, file_id, teacher=TEACHER_MODEL, labels=["positive", "negative"])
        done = finished(api, job_id)
    finally:
        worker.stop()

    assert done["status"] == "failed"
    assert done["error"] == {
        "code": "provider_not_configured",
        "message": NO_KEY,
        "param": "method.distillation.teacher",
    }
    assert labelling_calls(teacher_upstream) == []
    assert not UsageRecord.objects.filter(job__public_id=job_id).exists()


def test_a_paused_distillation_resumes_without_asking_the_teacher_again(
    api: Any,
    proxy_teacher_worker: Worker,
    teacher_upstream: FakeOpenAI,
    student_base: Model,
    pro: Any,
    catalog: None,
) -> None:
    file_id = upload(api, unlabelled(sentiment_csv(150, seed=4)))
    job_id = start_distillation(
        api, file_id, teacher=TEACHER_MODEL, labels=["positive", "negative"], hyperparameters=SLOW_JOB
    )
    wait_for(lambda: (Job.objects.get(public_id=job_id).progress or {}).get("step", 0) > 2, timeout=120)
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/pause").status_code == 200
    paused = wait_for(lambda: (j := Job.objects.get(public_id=job_id)).status == "paused" and j, timeout=60)
    # the pause bills what was done: every label (kept for the resume) and the training so far,
    # which its pause checkpoint, a callable model, holds
    assert usage(job_id)["input_tokens"][1] == 40 * 150
    kept = max(paused.checkpoints.values_list("trained_tokens", flat=True))
    assert usage(job_id)["trained_tokens"][1] == kept > 0

    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/resume").status_code == 200
    done = finished(api, job_id, timeout=240)

    assert done["status"] == "succeeded", done["error"]
    assert len(labelling_calls(teacher_upstream)) == 150  # the labels came back from storage
    assert usage(job_id)["input_tokens"][1] == 40 * 150  # and were billed once


def test_the_budget_stops_the_teacher_between_chunks(
    api: Any,
    proxy_teacher_worker: Worker,
    teacher_upstream: FakeOpenAI,
    student_base: Model,
    pro: Any,
    catalog: None,
) -> None:
    from apps.billing.pricing import cost_of

    file_id = upload(api, unlabelled(sentiment_csv(150, seed=4)))
    # room for the first chunk of 64 texts, not for the second
    chunk = cost_of(TEACHER_MODEL, "input_tokens", 40 * 64) + cost_of(TEACHER_MODEL, "output_tokens", 6 * 64)
    job_id = start_distillation(
        api, file_id, teacher=TEACHER_MODEL, labels=["positive", "negative"], max_cost=int(chunk * 1.5)
    )

    done = finished(api, job_id)

    assert done["status"] == "failed"
    assert done["error"]["code"] == "budget_reached"
    assert done["error"]["message"] == (
        "The job's max_cost was reached while the teacher labelled texts (64 of 150 done); no student was "
        "trained. Raise it, or distil fewer texts."
    )
    assert len(labelling_calls(teacher_upstream)) == 64
    billed = sum(cost for _, _, cost in usage(job_id).values())
    assert 0 < billed <= int(chunk * 1.5)
    assert done["fine_tuned_model"] is None


# --- a generation teacher whose answers name no label --------------------------------------------


def test_a_teacher_whose_answers_name_no_label_fails_the_job_and_is_billed(
    api: Any, celery_worker: Worker, student_base: Model, tiny_chat: Model, alice_org: Any
) -> None:
    file_id = upload(api, unlabelled(sentiment_csv(40, seed=5)))
    job_id = start_distillation(api, file_id, teacher="tiny-gpt2", labels=["positive", "negative"])

    done = finished(api, job_id)

    assert done["status"] == "failed"
    assert done["error"]["code"] == "teacher_unusable"
    assert done["error"]["param"] == "method.distillation.teacher"
    assert re.fullmatch(
        r"The teacher's answers named one of the labels for only \d+ of 40 texts, too few to train a student "
        r"\(for example line 2: .*\)\. Check that the teacher answers with one of the labels\.",
        done["error"]["message"],
    ), done["error"]["message"]
    billed = usage(job_id)
    assert billed["input_tokens"][0] == "tiny-gpt2" and billed["input_tokens"][1] > 40
    assert "trained_tokens" not in billed
    assert done["fine_tuned_model"] is None
    assert no_label_chunks_left(job_id, alice_org)
