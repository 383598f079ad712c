"""Fine-tuned model ids are built from the organization's slug, not its name; ids made before a
slug was chosen keep working."""

from __future__ import annotations

from typing import Any

from apps.accounts import actions as accounts
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.models import Project
from apps.registry.actions import create_fine_tuned_model, fine_tuned_name
from apps.registry.models import Model


def succeeded_fine_tune(project: Project, suffix: str = "tickets") -> Job:
    base = Model.objects.get(name="minilm-l6")
    return Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=project.organization,
        project=project,
        model=base,
        model_name=base.name,
        status=JobStatus.RUNNING,
        request={"suffix": suffix} if suffix else {},
    )


def test_a_new_model_id_carries_the_chosen_slug(alice: Any, alice_org: Any, alice_project: Project) -> None:
    accounts.choose_organization_slug(alice, alice_org, "acme-ml")
    alice_project.organization.refresh_from_db()
    job = succeeded_fine_tune(alice_project)

    model = create_fine_tuned_model(job, artifact_key="models/x", labels=["a", "b"], metrics={})

    assert model.name == f"ft:minilm-l6:acme-ml:tickets:{job.public_id}"


def test_a_model_id_without_a_suffix_keeps_the_empty_field(alice_org: Any) -> None:
    assert fine_tuned_name("minilm-l6", alice_org, "", "ftjob-1") == "ft:minilm-l6:acme::ftjob-1"


def test_renaming_the_organization_does_not_change_new_model_ids(
    alice: Any, alice_org: Any, alice_project: Project
) -> None:
    accounts.rename_organization(alice, alice_org, "Wile E. Coyote Industries")
    alice_project.organization.refresh_from_db()
    job = succeeded_fine_tune(alice_project)

    model = create_fine_tuned_model(job, artifact_key="models/x", labels=["a", "b"], metrics={})

    assert model.name == f"ft:minilm-l6:acme:tickets:{job.public_id}"


def test_ids_made_before_the_slug_was_chosen_keep_resolving(
    api: Any, alice: Any, alice_org: Any, alice_project: Project
) -> None:
    # given: a model made under the name-based slug, then a new slug chosen
    earlier = create_fine_tuned_model(
        succeeded_fine_tune(alice_project, "old"), artifact_key="models/a", labels=["a", "b"], metrics={}
    )
    assert earlier.name.startswith("ft:minilm-l6:acme:old:")
    accounts.choose_organization_slug(alice, alice_org, "acme-ml")
    alice_project.organization.refresh_from_db()

    # when: another model is made
    later = create_fine_tuned_model(
        succeeded_fine_tune(alice_project, "new"), artifact_key="models/b", labels=["a", "b"], metrics={}
    )

    # then: both ids answer, each under the id it was made with
    assert later.name.startswith("ft:minilm-l6:acme-ml:new:")
    for name in (earlier.name, later.name):
        response = api.get(f"/v1/models/{name}")
        assert response.status_code == 200, name
        assert response.json()["id"] == name
    listed = {m["id"] for m in api.get("/v1/models").json()["data"]}
    assert {earlier.name, later.name} <= listed
