"""Aliases pages: the list with its create form, an alias's page with its move form (gated moves
refused with the gate's own message), rollback, settings, deletion and history; protected aliases
for owners and admins; outsiders get 404 on every page and action."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client

from apps.evals import aliases
from apps.evals.actions import create_eval
from apps.evals.models import Eval
from apps.evals.parsing import parse_eval
from apps.jobs.models import JobStatus
from apps.registry.models import AliasMove, Model, ModelAlias
from tests.api.test_aliases import finished_run
from tests.api.test_evals import CHECK, eval_body
from tests.conftest import login
from tests.dashboard.test_content_security_policy import problems

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Texts(HTMLParser):
    """The text inside the element with `id` (whitespace collapsed), and, when it is a table or
    holds one, its rows as lists of cell texts; with `tag`, the texts of every such element."""

    def __init__(self, id: str | None = None, tag: str | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.id, self.tag = id, tag
        self.depth = 0  # > 0: inside the element sought
        self.parts: list[str] = []
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None
        self.found: list[str] = []
        self.current: list[str] | None = None
        self.in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        if self.depth:
            self.depth += 1
        elif (self.id and dict(attrs).get("id") == self.id) or (self.tag and tag == self.tag):
            self.depth = 1
            self.current = []
        if self.depth and tag == "thead":
            self.in_head = True
        if self.depth and tag == "tr" and not self.in_head:
            self.rows.append([])
        if self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or not self.depth:
            return
        if tag == "thead":
            self.in_head = False
        if tag in ("td", "th") and self.cell is not None and not self.in_head and self.rows:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None
        self.depth -= 1
        if not self.depth and self.current is not None:
            self.found.append(" ".join("".join(self.current).split()))
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)
            if self.current is not None:
                self.current.append(data)
            if self.cell is not None:
                self.cell.append(data)


def parse(html: str, id: str | None = None, tag: str | None = None) -> Texts:
    parser = Texts(id, tag)
    parser.feed(html)
    parser.close()
    return parser


def text(html: str, id: str) -> str:
    return " ".join("".join(parse(html, id).parts).split())


def table(html: str, id: str) -> list[list[str]]:
    """The table's rows as cell texts (its <thead> left out)."""
    return parse(html, id).rows


def messages_of(response: Any) -> list[str]:
    html = response.content.decode()
    if '<ul class="messages">' not in html:
        return []
    block = html.split('<ul class="messages">', 1)[1].split("</ul>", 1)[0]
    return parse(block, tag="li").found


# --- Fixtures ------------------------------------------------------------------------------------
def make_model(name: str, task: str = "generation") -> Model:
    return Model.objects.create(
        name=name, task=task, limits={"servable": True}, artifact_key="local:/nowhere"
    )


@pytest.fixture
def models(db: None) -> list[Model]:
    return [make_model("chat-a"), make_model("chat-b")]


def make_gate_eval(project: Any, user: Any, name: str = "Support answers") -> Eval:
    body = eval_body(name=name)
    body["testing_criteria"] = [{**CHECK, "name": "Right answer"}]
    return create_eval(project, parse_eval(project, body), user)


def list_url(project: Any) -> str:
    return f"/projects/{project.public_id}/aliases/"


def alias_url(project: Any, name: str, action: str = "") -> str:
    return f"/projects/{project.public_id}/aliases/{name}/{action}"


def gate(evaluation: Eval, rate: float = 0.8, not_worse: bool = True) -> dict[str, Any]:
    return {"eval_id": evaluation.public_id, "min_pass_rate": rate, "not_worse": not_worse}


# --- The list ------------------------------------------------------------------------------------
def test_the_list_shows_each_alias_and_a_form_to_make_one(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    evaluation = make_gate_eval(alice_project, alice)
    aliases.create(
        alice_project,
        {"name": "support-bot@prod", "model": "chat-a", "protected": True, "gate": gate(evaluation)},
        alice,
    )
    free = aliases.create(alice_project, {"name": "support-bot@dev", "model": "chat-b"}, alice)
    models[1].delete()
    last_move = AliasMove.objects.filter(alias=free).get().created_at

    response = alice_client.get(list_url(alice_project))

    assert response.status_code == 200
    html = response.content.decode()
    assert problems(response) == []
    assert table(html, "aliases") == [
        ["support-bot@dev", "model deleted", "—", "None: moves freely", f"{last_move:%Y-%m-%d %H:%M}"],
        [
            "support-bot@prod",
            "chat-a",
            "protected",
            "eval Support answers, ≥ 80%, not worse",
            f"{AliasMove.objects.get(alias__name='support-bot@prod').created_at:%Y-%m-%d %H:%M}",
        ],
    ]
    assert (
        f'<a class="mono" href="/projects/{alice_project.public_id}/aliases/support-bot@prod/">support-bot@prod</a>'
        in html
    )
    assert (
        f'<a href="/projects/{alice_project.public_id}/evals/{evaluation.public_id}/">Support answers</a>'
        in html
    )
    assert "Call one by its name as the <code>model</code> of any request" in html
    assert '<code>model="support-bot@prod"</code>' in html
    # the form: the project's callable models, the protected checkbox (alice owns), the evals
    assert '<option value="chat-a">chat-a</option>' in html
    assert '<input type="checkbox" name="protected">' in html
    assert f'<option value="{evaluation.public_id}">Support answers · {evaluation.public_id}</option>' in html
    assert 'name="min_pass_rate" min="0" max="100" step="any" value="80"' in html


def test_the_list_says_when_there_are_no_aliases(alice_client: Client, alice_project: Any) -> None:
    html = alice_client.get(list_url(alice_project)).content.decode()

    assert table(html, "aliases") == [["No aliases yet. Make one below, or with the API (POST /v1/aliases)."]]


def test_an_alias_is_made_through_the_form(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    evaluation = make_gate_eval(alice_project, alice)

    response = alice_client.post(
        f"{list_url(alice_project)}new",
        {
            "name": "support-bot@prod",
            "model": "chat-a",
            "protected": "on",
            "gate_eval": evaluation.public_id,
            "min_pass_rate": "90",
            "not_worse": "on",
        },
    )

    assert response.status_code == 302
    assert response["Location"] == alias_url(alice_project, "support-bot@prod")
    alias = ModelAlias.objects.get(project=alice_project)
    assert (alias.name, alias.model, alias.protected, alias.gate, alias.created_by) == (
        "support-bot@prod",
        models[0],
        True,
        {"eval_id": evaluation.public_id, "min_pass_rate": 0.9, "not_worse": True},
        alice,
    )
    page = alice_client.get(response["Location"])
    assert messages_of(page) == ["Alias “support-bot@prod” created: it points to chat-a."]
    assert table(page.content.decode(), "alias-details")[:3] == [
        ["Model", "chat-a"],
        ["Gate", "eval Support answers, ≥ 90%, not worse"],
        ["Protected", "Yes: only owners and admins move, roll back, change or delete it"],
    ]


def test_a_free_alias_needs_no_eval(alice_client: Client, alice_project: Any, models: list[Model]) -> None:
    alice_client.post(
        f"{list_url(alice_project)}new", {"name": "bot@dev", "model": "chat-b", "min_pass_rate": "80"}
    )

    alias = ModelAlias.objects.get(project=alice_project)
    assert (alias.name, alias.model, alias.protected, alias.gate) == ("bot@dev", models[1], False, {})


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (
            {"name": "prod", "model": "chat-a"},
            "name must be a name and a label joined by @, such as 'support-bot@prod': lowercase letters, "
            "digits, '.', '_' and '-', at most 31 characters each.",
        ),
        (
            {"name": "bot@prod", "model": "nope"},
            "The model 'nope' does not exist or you do not have access to it.",
        ),
        (
            {"name": "bot@prod", "model": "chat-a", "gate_eval": "EVAL", "min_pass_rate": "120"},
            "The minimum pass rate must be a number from 0 to 100 (percent).",
        ),
        (
            {"name": "bot@prod", "model": "chat-a", "gate_eval": "EVAL", "min_pass_rate": "lots"},
            "The minimum pass rate must be a number from 0 to 100 (percent).",
        ),
        (
            {"name": "bot@prod", "model": "chat-a", "gate_eval": "eval_nope", "min_pass_rate": "80"},
            "gate.eval_id: no such eval in this project: 'eval_nope'.",
        ),
    ],
)
def test_a_refused_form_comes_back_filled_in_with_why(
    alice_client: Client,
    alice: Any,
    alice_project: Any,
    models: list[Model],
    form: dict[str, str],
    message: str,
) -> None:
    evaluation = make_gate_eval(alice_project, alice)
    if form.get("gate_eval") == "EVAL":
        form = {**form, "gate_eval": evaluation.public_id}

    response = alice_client.post(f"{list_url(alice_project)}new", form, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain[0][0].startswith(f"{list_url(alice_project)}?")
    assert messages_of(response) == [message]
    html = response.content.decode()
    assert f'name="name" required maxlength="63" value="{form["name"]}"' in html
    if form["model"] == "chat-a":
        assert '<option value="chat-a" selected>chat-a</option>' in html
    assert not ModelAlias.objects.exists()


def test_a_second_alias_of_the_same_name_is_refused(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a"}, alice)

    response = alice_client.post(
        f"{list_url(alice_project)}new", {"name": "bot@prod", "model": "chat-b"}, follow=True
    )

    assert messages_of(response) == ["The alias 'bot@prod' already exists in this project."]
    assert ModelAlias.objects.get().model == models[0]


# --- An alias -------------------------------------------------------------------------------------
def test_a_free_alias_moves_rolls_back_and_keeps_its_history(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a"}, alice)
    page = alice_client.get(alias_url(alice_project, "bot@prod"))
    html = page.content.decode()
    assert problems(page) == []
    assert "No gate: it moves to any model you choose, at once." in html
    assert 'id="move-run"' not in html
    assert 'id="alias-rollback"' not in html  # it has never moved

    moved = alice_client.post(alias_url(alice_project, "bot@prod", "move"), {"model": "chat-b"}, follow=True)

    assert moved.redirect_chain == [(alias_url(alice_project, "bot@prod"), 302)]
    assert messages_of(moved) == ["“bot@prod” now points to chat-b."]
    assert ModelAlias.objects.get().model == models[1]
    html = moved.content.decode()
    assert text(html, "alias-rollback") == "The last change came from chat-a. Roll back to chat-a"
    assert 'data-confirm="Move bot@prod back to chat-a? Requests reach it at once, without a gate."' in html

    back = alice_client.post(alias_url(alice_project, "bot@prod", "rollback"), follow=True)

    assert messages_of(back) == ["“bot@prod” rolled back: it points to chat-a again."]
    assert ModelAlias.objects.get().model == models[0]
    times = [f"{m.created_at:%Y-%m-%d %H:%M:%S}" for m in AliasMove.objects.all()]
    assert table(back.content.decode(), "alias-moves") == [
        [times[0], "alice@example.com", "rollback", "chat-b → chat-a", "—"],
        [times[1], "alice@example.com", "move", "chat-a → chat-b", "—"],
        [times[2], "alice@example.com", "create", "— → chat-a", "—"],
    ]
    # two rollbacks in a row go back and forth
    assert (
        text(back.content.decode(), "alias-rollback")
        == "The last change came from chat-b. Roll back to chat-b"
    )


def test_a_gated_move_is_refused_with_the_gates_reason_and_made_with_a_passing_run(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    evaluation = make_gate_eval(alice_project, alice)
    aliases.create(
        alice_project, {"name": "bot@prod", "model": "chat-a", "gate": gate(evaluation, 0.8, False)}, alice
    )
    weak = finished_run(evaluation, "chat-b", 3, 5)
    other = finished_run(evaluation, "chat-a", 5, 5)
    running = finished_run(evaluation, "chat-b", 5, 5, status=JobStatus.RUNNING)
    page = alice_client.get(alias_url(alice_project, "bot@prod"))
    html = page.content.decode()
    # the completed runs of the gate's eval, newest first, each with its model and pass rate
    assert f'<option value="{other}">chat-a · 100.0% (5 of 5) · {other}</option>' in html
    assert f'<option value="{weak}">chat-b · 60.0% (3 of 5) · {weak}</option>' in html
    assert running not in html
    assert html.index(other) < html.index(weak)
    assert table(html, "alias-details")[:2] == [
        ["Model", "chat-a"],
        ["Gate", f"eval Support answers, ≥ 80% Latest run of chat-a: 100.0% (5 of 5) · {other}"],
    ]
    assert text(html, "alias-move-rule") == (
        "Gated: it moves only with a completed run of the eval Support answers that sampled the model you "
        "choose and passed at least 80% of its items."
    )

    refused = alice_client.post(
        alias_url(alice_project, "bot@prod", "move"), {"model": "chat-b", "run_id": weak}, follow=True
    )

    assert refused.status_code == 200
    assert (
        refused.redirect_chain[0][0] == f"{alias_url(alice_project, 'bot@prod')}?model=chat-b&run_id={weak}"
    )
    assert messages_of(refused) == [f"Run {weak} passed 60.0% of its items (3 of 5); 'bot@prod' needs 80.0%."]
    assert ModelAlias.objects.get().model == models[0]
    html = refused.content.decode()
    assert '<option value="chat-b" selected>chat-b</option>' in html  # the form as it was sent
    assert f'<option value="{weak}" selected>chat-b · 60.0% (3 of 5) · {weak}</option>' in html

    wrong_model = alice_client.post(
        alias_url(alice_project, "bot@prod", "move"), {"model": "chat-b", "run_id": other}, follow=True
    )
    assert messages_of(wrong_model) == [f"Run {other} sampled chat-a, not chat-b."]

    good = finished_run(evaluation, "chat-b", 9, 10)
    moved = alice_client.post(
        alias_url(alice_project, "bot@prod", "move"), {"model": "chat-b", "run_id": good}, follow=True
    )

    assert messages_of(moved) == [f"“bot@prod” now points to chat-b, allowed by run {good}."]
    assert ModelAlias.objects.get().model == models[1]
    move = AliasMove.objects.filter(kind="move").get()
    assert move.run_id == good
    rows = table(moved.content.decode(), "alias-moves")
    assert rows[0] == [
        f"{move.created_at:%Y-%m-%d %H:%M:%S}",
        "alice@example.com",
        "move",
        "chat-a → chat-b",
        good,
    ]
    assert (
        f'<a href="/projects/{alice_project.public_id}/evals/{evaluation.public_id}/runs/{good}/">{good}</a>'
        in moved.content.decode()
    )


def test_not_worse_compares_with_the_current_models_latest_run(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    evaluation = make_gate_eval(alice_project, alice)
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a", "gate": gate(evaluation)}, alice)
    baseline = finished_run(evaluation, "chat-a", 5, 5)
    candidate = finished_run(evaluation, "chat-b", 9, 10)
    assert text(
        alice_client.get(alias_url(alice_project, "bot@prod")).content.decode(), "alias-move-rule"
    ) == (
        "Gated: it moves only with a completed run of the eval Support answers that sampled the model you "
        "choose and passed at least 80% of its items, and no lower than the current model's latest completed "
        "run of it."
    )

    refused = alice_client.post(
        alias_url(alice_project, "bot@prod", "move"), {"model": "chat-b", "run_id": candidate}, follow=True
    )

    assert messages_of(refused) == [
        f"Run {candidate} passed 90.0% (9 of 10), worse than chat-a's 100.0% (5 of 5) in run {baseline}."
    ]
    assert ModelAlias.objects.get().model == models[0]


def test_a_gated_alias_without_runs_cannot_be_moved_yet(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    evaluation = make_gate_eval(alice_project, alice)
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a", "gate": gate(evaluation)}, alice)

    html = alice_client.get(alias_url(alice_project, "bot@prod")).content.decode()

    assert text(html, "move-run-help") == "No completed run of this eval yet: run it on the model first."
    assert '<button type="submit" disabled>Move alias</button>' in html
    # and without a run the server says what it needs
    refused = alice_client.post(
        alias_url(alice_project, "bot@prod", "move"), {"model": "chat-b"}, follow=True
    )
    assert messages_of(refused) == [
        f"The alias 'bot@prod' moves only with a run of eval {evaluation.public_id} that chat-b passed: "
        "give its run_id."
    ]


def test_the_settings_change_the_gate_and_protection(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    evaluation = make_gate_eval(alice_project, alice)
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a"}, alice)

    saved = alice_client.post(
        alias_url(alice_project, "bot@prod", "update"),
        {"protected_field": "1", "protected": "on", "gate_eval": evaluation.public_id, "min_pass_rate": "75"},
        follow=True,
    )

    assert messages_of(saved) == ["Settings of “bot@prod” saved."]
    alias = ModelAlias.objects.get()
    assert (alias.protected, alias.gate) == (
        True,
        {"eval_id": evaluation.public_id, "min_pass_rate": 0.75, "not_worse": False},
    )
    html = saved.content.decode()
    assert 'name="min_pass_rate" min="0" max="100" step="any" value="75"' in html
    assert f'<option value="{evaluation.public_id}" selected>' in html

    alice_client.post(
        alias_url(alice_project, "bot@prod", "update"), {"protected_field": "1", "gate_eval": ""}
    )

    alias.refresh_from_db()
    assert (alias.protected, alias.gate) == (False, {})


def test_an_alias_is_deleted(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a"}, alice)
    html = alice_client.get(alias_url(alice_project, "bot@prod")).content.decode()
    assert (
        'data-confirm="Delete the alias bot@prod and its history? Requests that name it will fail."' in html
    )

    response = alice_client.post(alias_url(alice_project, "bot@prod", "delete"), follow=True)

    assert response.redirect_chain == [(list_url(alice_project), 302)]
    assert messages_of(response) == [
        "Alias “bot@prod” deleted. Requests that name it now fail with model_not_found."
    ]
    assert not ModelAlias.objects.exists()
    assert alice_client.get(alias_url(alice_project, "bot@prod")).status_code == 404


def test_a_deleted_model_and_a_deleted_eval_are_said_so(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    evaluation = make_gate_eval(alice_project, alice)
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a", "gate": gate(evaluation)}, alice)
    eval_id = evaluation.public_id
    evaluation.delete()
    models[0].delete()

    html = alice_client.get(alias_url(alice_project, "bot@prod")).content.decode()

    assert table(html, "alias-details")[:2] == [
        ["Model", "model deleted Requests through the alias fail until it is moved."],
        ["Gate", f"eval {eval_id} (deleted), ≥ 80%, not worse"],
    ]
    assert (
        text(html, "alias-gate-deleted")
        == "Its gate's eval was deleted: change the gate below before moving it."
    )


# --- Protected aliases and members ---------------------------------------------------------------------
def test_a_member_cannot_change_a_protected_alias_and_sees_no_controls_for_it(
    client: Client, alice: Any, bob: Any, alice_project: Any, models: list[Model]
) -> None:
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a", "protected": True}, alice)
    aliases.move(ModelAlias.objects.get(), {"model": "chat-b"}, alice)
    login(client, bob)

    page = client.get(alias_url(alice_project, "bot@prod"))

    html = page.content.decode()
    assert page.status_code == 200
    assert text(html, "alias-protected-note") == (
        "This alias is protected: only owners and admins can move, roll back, change or delete it. "
        "You can still call it."
    )
    for control in ("alias-move", "alias-rollback", "alias-settings", "alias-delete"):
        assert f'id="{control}"' not in html, control
    assert len(table(html, "alias-moves")) == 2  # the history is for everyone to read

    for action, data, verb in [
        ("move", {"model": "chat-a"}, "move"),
        ("rollback", {}, "roll back"),
        ("update", {"gate_eval": ""}, "change"),
        ("delete", {}, "delete"),
    ]:
        response = client.post(alias_url(alice_project, "bot@prod", action), data, follow=True)
        assert response.status_code == 200, action
        assert messages_of(response) == [f"Only owners and admins can {verb} the protected alias 'bot@prod'."]
    alias = ModelAlias.objects.get()
    assert (alias.model, alias.protected, alias.gate) == (models[1], True, {})
    assert AliasMove.objects.count() == 2


def test_a_member_manages_free_aliases_but_cannot_protect_one(
    client: Client, alice: Any, bob: Any, alice_project: Any, models: list[Model]
) -> None:
    login(client, bob)
    form = client.get(list_url(alice_project)).content.decode()
    assert 'name="protected"' not in form

    refused = client.post(
        f"{list_url(alice_project)}new",
        {"name": "bot@prod", "model": "chat-a", "protected": "on"},
        follow=True,
    )
    assert messages_of(refused) == ["Only owners and admins can create a protected alias."]
    client.post(f"{list_url(alice_project)}new", {"name": "bot@prod", "model": "chat-a"})
    html = client.get(alias_url(alice_project, "bot@prod")).content.decode()
    assert 'id="alias-move"' in html and 'id="alias-settings"' in html
    assert 'name="protected"' not in html  # settings without the checkbox

    moved = client.post(alias_url(alice_project, "bot@prod", "move"), {"model": "chat-b"}, follow=True)
    assert messages_of(moved) == ["“bot@prod” now points to chat-b."]
    assert ModelAlias.objects.get().model == models[1]
    sneaked = client.post(
        alias_url(alice_project, "bot@prod", "update"),
        {"protected_field": "1", "protected": "on"},
        follow=True,
    )
    assert messages_of(sneaked) == ["Only owners and admins can protect an alias."]
    assert ModelAlias.objects.get().protected is False


# --- Outsiders ------------------------------------------------------------------------------------------
def test_an_outsider_gets_404_on_every_page_and_action(
    carol_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a"}, alice)

    assert carol_client.get(list_url(alice_project)).status_code == 404
    assert carol_client.get(alias_url(alice_project, "bot@prod")).status_code == 404
    assert (
        carol_client.post(f"{list_url(alice_project)}new", {"name": "x@y", "model": "chat-a"}).status_code
        == 404
    )
    for action in ("move", "rollback", "update", "delete"):
        response = carol_client.post(alias_url(alice_project, "bot@prod", action), {"model": "chat-b"})
        assert response.status_code == 404, action
    alias = ModelAlias.objects.get()
    assert (alias.model, alias.gate, alias.protected) == (models[0], {}, False)
    assert ModelAlias.objects.count() == 1 and AliasMove.objects.count() == 1


def test_a_missing_alias_is_404_and_actions_want_post(
    alice_client: Client, alice: Any, alice_project: Any, models: list[Model]
) -> None:
    aliases.create(alice_project, {"name": "bot@prod", "model": "chat-a"}, alice)

    assert alice_client.get(alias_url(alice_project, "bot@dev")).status_code == 404
    assert (
        alice_client.post(alias_url(alice_project, "bot@dev", "move"), {"model": "chat-b"}).status_code == 404
    )
    assert alice_client.get(alias_url(alice_project, "bot@prod", "move")).status_code == 405
    assert alice_client.get(alias_url(alice_project, "bot@prod", "rollback")).status_code == 405
    assert ModelAlias.objects.get().model == models[0]
