"""The new fine-tune form: it picks no file for the user, says every error at once beside its field
in the form's own words, and asks before starting on too little data."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from apps.jobs.models import Job
from apps.projects.models import File
from tests.dashboard.test_fine_tuning import field_error, form, make_file


@pytest.fixture
def train_file(alice_project: Any) -> File:
    return make_file(alice_project, "tickets.csv")


def new_url(project: Any) -> str:
    return f"/projects/{project.public_id}/fine-tuning/new"


def estimate_url(project: Any) -> str:
    return f"/projects/{project.public_id}/fine-tuning/estimate"


def select(page: str, name: str) -> str:
    return page.split(f'id="id_{name}"')[1].split("</select>")[0]


def tag(page: str, name: str) -> str:
    """The opening tag of a field."""
    match = re.search(rf'<(?:input|select)[^>]*id="id_{name}"[^>]*>', page)
    assert match, name
    return match.group(0)


# --- Nothing chosen for the user -------------------------------------------------------------------
def test_the_form_preselects_no_training_file_and_no_base_model(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    make_file(alice_project, "other.csv")

    page = alice_client.get(new_url(alice_project)).content.decode()

    files = select(page, "training_file")
    assert '<option value="" selected>Choose a training file…</option>' in files
    assert files.count("selected") == 1
    models = select(page, "model")
    assert '<option value="" selected>Choose a base model…</option>' in models
    assert models.count("selected") == 1


def test_a_file_named_in_the_address_is_preselected(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    page = alice_client.get(f"{new_url(alice_project)}?training_file={train_file.public_id}").content.decode()

    files = select(page, "training_file")
    assert (
        f'<option value="{train_file.public_id}" selected>tickets.csv · 80 rows · classification CSV</option>'
        in files
    )
    assert '<option value="" >Choose a training file…</option>' in files


def test_numbers_are_number_inputs_with_their_bounds(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    page = alice_client.get(new_url(alice_project)).content.decode()

    assert (
        'type="number" id="id_n_epochs" name="n_epochs" value="" min="1" max="50" step="1" placeholder="auto"'
        in page
    )
    assert (
        'type="number" id="id_warmup_ratio" name="warmup_ratio" value="0.1" min="0.0" max="0.5" step="any"'
        in page
    )
    assert (
        'type="number" id="id_learning_rate_multiplier" name="learning_rate_multiplier" value="" min="0" step="any"'
        in page
    )
    assert 'id="id_max_cost" name="max_cost" value="" min="0" step="any"' in tag(page, "max_cost")
    assert (
        "novalidate" in page.split('id="fine-tune-form"')[1].split(">")[0]
    )  # the server says it all at once


# --- Every error at once, beside its field ---------------------------------------------------------
def test_a_wrong_form_shows_every_error_at_once_beside_its_field(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    # given a form wrong in nine places
    wrong = form(
        train_file,
        training_file="",
        model="",
        n_epochs="0",
        batch_size="1000",
        warmup_ratio="0.9",
        learning_rate_multiplier="-1",
        suffix="no spaces",
        seed="-1",
        max_cost="lots",
    )

    # when
    response = alice_client.post(new_url(alice_project), wrong)

    # then every one is said, beside its field, in the form's words
    page = response.content.decode()
    assert response.status_code == 200 and not Job.objects.exists()
    expected = {
        "training_file": "Choose a training file.",
        "model": "Choose a base model.",
        "n_epochs": "Epochs must be a whole number from 1 to 50, or empty for auto.",
        "batch_size": "Batch size must be a whole number from 1 to 256, or empty for auto.",
        "learning_rate_multiplier": "Learning rate multiplier must be a number greater than 0, or empty for auto.",
        "warmup_ratio": "Warmup ratio must be a number from 0 to 0.5.",
        "seed": "Seed must be a whole number from 0 to 2147483647, or empty for auto.",
        "suffix": "Suffix must be 1 to 64 letters, digits, - or _ (no spaces).",
        "max_cost": "Max cost must be an amount in dollars, e.g. 5 or 2.50.",
    }
    for name, message in expected.items():
        assert field_error(page, name) == message, name
        assert 'aria-invalid="true"' in tag(page, name), name
        assert f'aria-describedby="error-{name} help-{name}"' in tag(page, name), name
    for name in ("validation_file", "weight_decay", "max_seq_length", "early_stopping_patience"):
        assert field_error(page, name) == "" and "aria-invalid" not in tag(page, name), name
    summary = page.split('id="error-summary"')[1].split("</div>")[0]
    assert "9 fields need attention:" in summary
    assert '<a href="#id_n_epochs">Epochs</a>' in summary and '<a href="#id_max_cost">Max cost</a>' in summary
    assert "n_epochs must" not in page and "max_cost must" not in page


def test_errors_the_api_finds_come_together_with_the_forms_own(
    alice_client: Any, alice_project: Any, train_file: File, tiny_base: Any
) -> None:
    # max_seq_length above the model's limit is known only once the model is read (the API's check)
    wrong = form(train_file, model="tiny-bert", max_seq_length="256", n_epochs="99", suffix="bad suffix")

    page = alice_client.post(new_url(alice_project), wrong).content.decode()

    assert field_error(page, "max_seq_length") == "Max sequence length must be at most 128 for tiny-bert."
    assert field_error(page, "n_epochs") == "Epochs must be a whole number from 1 to 50, or empty for auto."
    assert field_error(page, "suffix") == "Suffix must be 1 to 64 letters, digits, - or _ (no spaces)."
    assert not Job.objects.exists()


def test_the_estimate_shows_every_error_at_once_but_not_yet_the_empty_required_fields(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    page = alice_client.post(
        estimate_url(alice_project), form(train_file, model="", n_epochs="0", weight_decay="2")
    ).content.decode()

    assert field_error(page, "n_epochs") == "Epochs must be a whole number from 1 to 50, or empty for auto."
    assert field_error(page, "weight_decay") == "Weight decay must be a number from 0 to 1."
    assert field_error(page, "model") == ""  # not chosen yet: the form is being filled in
    assert "Fix the fields marked in red to see the estimate." in page


def test_a_number_the_browser_could_not_read_is_an_error_not_auto(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    # a number input hands "1e" over as empty; the page's script names it in `unreadable`
    data = {**form(train_file, n_epochs="", max_cost=""), "unreadable": ["n_epochs", "max_cost"]}

    page = alice_client.post(new_url(alice_project), data).content.decode()

    assert field_error(page, "n_epochs") == "Epochs must be a whole number from 1 to 50, or empty for auto."
    assert field_error(page, "max_cost") == "Max cost must be an amount in dollars, e.g. 5 or 2.50."
    assert not Job.objects.exists()


# --- A base that cannot learn the file, in plain words ---------------------------------------------
def test_a_base_that_cannot_learn_the_file_is_told_which_base_fits(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    chats = make_file(alice_project, "support-chats.jsonl", format="chat_jsonl")
    texts = make_file(alice_project, "texts.csv", format="text_csv")
    url = new_url(alice_project)

    csv_on_lm = alice_client.post(url, form(train_file, model="smollm2-135m-instruct")).content.decode()
    chat_on_classifier = alice_client.post(url, form(chats, model="minilm-l6")).content.decode()
    texts_without_teacher = alice_client.post(url, form(texts, model="minilm-l6")).content.decode()

    assert (
        field_error(csv_on_lm, "model") == "tickets.csv holds labelled texts: pick minilm-l6 (a classifier)."
    )
    assert field_error(chat_on_classifier, "model") == (
        "support-chats.jsonl holds chat conversations: pick smollm2-135m-instruct (a text generator)."
    )
    assert field_error(texts_without_teacher, "model") == (
        "texts.csv holds unlabelled texts: choose a teacher below to label them, or upload a file with a label column."
    )
    assert field_error(csv_on_lm, "training_file") == ""
    assert not Job.objects.exists()


# --- Too little data: asked first -------------------------------------------------------------------
def test_a_tiny_dataset_is_started_only_once_confirmed(alice_client: Any, alice_project: Any) -> None:
    tiny = make_file(
        alice_project,
        "six.csv",
        validation={"valid": True, "rows": 6, "stats": {"tokens": {"mean": 8}, "labels": {"a": 3, "b": 3}}},
    )
    reason = (
        "six.csv has only 6 examples: a model learns little from fewer than 10, and its scores would rest on "
        "1 example held out. Add examples (dozens per label help), or start anyway."
    )

    estimate = alice_client.post(estimate_url(alice_project), form(tiny)).content.decode()
    refused = alice_client.post(new_url(alice_project), form(tiny))
    started = alice_client.post(new_url(alice_project), {**form(tiny), "confirm_small_data": "yes"})

    assert reason in estimate  # said early, while the form is filled in
    page = refused.content.decode()
    assert refused.status_code == 200
    assert f"<strong>Very little data.</strong> {reason}" in page
    assert '<input type="checkbox" name="confirm_small_data" value="yes" id="id_confirm_small_data">' in page
    assert started.status_code == 302
    assert Job.objects.count() == 1


def test_labels_with_one_or_two_examples_ask_for_confirmation(alice_client: Any, alice_project: Any) -> None:
    labels = {"billing": 50, "bug": 26, "praise": 2, "spam": 1}
    rare = make_file(
        alice_project,
        "tickets.csv",
        validation={"valid": True, "rows": 79, "stats": {"tokens": {"mean": 8}, "labels": labels}},
    )

    page = html.unescape(alice_client.post(new_url(alice_project), form(rare)).content.decode())

    assert (
        'Too few examples of these labels: "spam" (1 example), "praise" (2 examples). The model can hardly '
        "learn them, and the validation split may not test them. Add examples (dozens per label help), or "
        "start anyway."
    ) in page
    assert not Job.objects.exists()


def test_a_dataset_of_ten_examples_with_common_labels_starts_without_a_question(
    alice_client: Any, alice_project: Any
) -> None:
    ten = make_file(
        alice_project,
        "ten.csv",
        validation={"valid": True, "rows": 10, "stats": {"tokens": {"mean": 8}, "labels": {"a": 5, "b": 5}}},
    )

    response = alice_client.post(new_url(alice_project), form(ten))

    assert response.status_code == 302 and Job.objects.count() == 1


def test_the_api_still_takes_a_tiny_dataset_as_openai_clients_expect(api: Any, alice_project: Any) -> None:
    tiny = make_file(
        alice_project, "six.csv", validation={"valid": True, "rows": 6, "stats": {"tokens": {"mean": 8}}}
    )

    response = api.post(
        "/v1/fine_tuning/jobs", {"model": "minilm-l6", "training_file": tiny.public_id}, format="json"
    )

    assert response.status_code == 200, response.content
