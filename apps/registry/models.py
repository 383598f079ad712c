from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import Organization
from apps.core.errors import ActionError

# A fine-tune of a fine-tune of ...: how many generations back the catalog base is looked for.
MAX_LINEAGE = 16


class Task(models.TextChoices):
    CLASSIFICATION = "classification", "Classification"
    GENERATION = "generation", "Generation"
    EMBEDDING = "embedding", "Embedding"


class Provider(models.TextChoices):
    LOCAL = "local", "Local (our workers)"
    OPENAI = "openai", "OpenAI (proxied)"


class ModelQuerySet(models.QuerySet["Model"]):
    def visible_to(self, organization: Organization) -> ModelQuerySet:
        """The catalog plus the organization's own models: the one scoping helper for models."""
        return self.filter(Q(organization__isnull=True) | Q(organization=organization))

    def catalog(self) -> ModelQuerySet:
        return self.filter(organization__isnull=True)

    def in_service(self) -> ModelQuerySet:
        """Models not shut down yet, for the lists a customer picks from."""
        return self.exclude(shutdown_date__lte=timezone.now().date())


class Model(models.Model):
    """A callable model: a catalog base model (organization is null) or a fine-tuned one.

    `name` is the public id, as OpenAI's: `minilm-l6`, `ft:minilm-l6:acme:spam:ftjob-…`.
    """

    name = models.CharField(max_length=200, unique=True)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="models"
    )
    project = models.ForeignKey(
        "projects.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="models"
    )
    task = models.CharField(max_length=20, choices=Task.choices)
    provider = models.CharField(max_length=10, choices=Provider.choices, default=Provider.LOCAL)
    base = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    description = models.CharField(max_length=300, blank=True, default="")
    # Catalog: the catalog key the worker resolves to a local directory. Fine-tuned: the storage
    # prefix of the saved model directory.
    artifact_key = models.CharField(max_length=300, blank=True, default="")
    labels = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    context_length = models.PositiveIntegerField(default=512)
    # Fine-tuning limits and defaults a base model accepts (max_seq_length, methods, ...).
    limits = models.JSONField(default=dict, blank=True)
    is_fine_tunable = models.BooleanField(default=False)
    # The day a catalog model stops answering and taking fine-tunes (UTC). Until then it is listed as
    # deprecated, with the date, in the API and on the dashboard; from then on, calls are refused
    # with a message that names the date.
    shutdown_date = models.DateField(null=True, blank=True)
    # Fine-tuned: the member who created the job that made it (catalog models: nobody). Besides
    # owners and admins, only they may delete it.
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModelQuerySet.as_manager()

    class Meta:
        ordering = ["organization_id", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_catalog(self) -> bool:
        return self.organization_id is None

    @property
    def owned_by(self) -> str:
        return self.organization.public_id if self.organization is not None else "modelworks"

    @property
    def is_shut_down(self) -> bool:
        return self.shutdown_date is not None and self.shutdown_date <= timezone.now().date()

    def refuse_if_shut_down(self, param: str) -> None:
        """404 model_not_found, naming the date, once the model is shut down."""
        if self.is_shut_down:
            raise ActionError(
                f"The model '{self.name}' was shut down on {self.shutdown_date:%Y-%m-%d} and no longer answers "
                "or takes fine-tunes; choose another model from GET /v1/models.",
                code="model_not_found",
                param=param,
                status=404,
            )

    @property
    def embedding_dimensions(self) -> int | None:
        """The length of the vectors the model makes through /v1/embeddings; None when it cannot
        embed (generators, classifiers: the catalog marks the models that can)."""
        value = self.limit("embedding_dimensions")
        return int(value) if value else None

    def limit(self, key: str, default: Any = None) -> Any:
        return (self.limits or {}).get(key, default)

    @property
    def catalog_base(self) -> Model | None:
        """The catalog model a fine-tuned model descends from (itself for a catalog model): its row
        holds the fine-tuning limits and methods. None when the lineage is broken."""
        model: Model | None = self
        for _ in range(MAX_LINEAGE):
            if model is None or model.organization_id is None:
                return model
            model = model.base
        return None


class ModelAlias(models.Model):
    """A project's name for a model, such as `support-bot@prod`, resolved when a request is made
    (docs/api.md, "Model aliases"). Moving it may require an eval run the candidate passed
    (`gate`); every move is kept in `AliasMove`, so the last one can be rolled back."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64)
    # Null once the model it pointed to was deleted: calls are refused until the alias is moved.
    model = models.ForeignKey(Model, null=True, on_delete=models.SET_NULL, related_name="aliases")
    # Only owners and admins may move, roll back or delete a protected alias.
    protected = models.BooleanField(default=False)
    # {"eval_id": "eval_…", "min_pass_rate": 0.8, "not_worse": bool}, or {} for a free alias.
    gate = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="one_alias_name_per_project")]

    def __str__(self) -> str:
        return self.name


class AliasMove(models.Model):
    """One change of an alias: who, when, from which model to which, and the eval run that allowed
    it (empty for a free alias, its creation and a rollback)."""

    alias = models.ForeignKey(ModelAlias, on_delete=models.CASCADE, related_name="moves")
    kind = models.CharField(max_length=10)  # create | move | rollback
    from_model = models.CharField(max_length=200, blank=True, default="")
    to_model = models.CharField(max_length=200)
    run_id = models.CharField(max_length=48, blank=True, default="")
    moved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.alias_id}: {self.from_model} → {self.to_model}"
