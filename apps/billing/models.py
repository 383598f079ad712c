from __future__ import annotations

from django.db import models

from apps.accounts.models import Organization


class Unit(models.TextChoices):
    INPUT_TOKENS = "input_tokens", "Input tokens"
    OUTPUT_TOKENS = "output_tokens", "Output tokens"
    TRAINED_TOKENS = "trained_tokens", "Trained tokens"
    CLASSIFIED_TEXTS = "classified_texts", "Classified texts"


class UsageRecord(models.Model):
    """One billable quantity of one job: units `start` to `start + quantity` of the job's running
    count of `unit`. Work is billed as it is done (a saved checkpoint, a chunk of a batch, the end
    of each attempt), each time for what the count added since the last bill, in the transaction
    that records the work, under the job's row lock. Unique per (job, unit, model, start): the same units
    of work can never be billed twice, whatever is retried or delivered again. Money is integer
    micro-dollars (docs/architecture.md, "Billing exactly once").
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="usage")
    # Usage outlives the project and job it came from: deleting them must not erase billing
    # history or lift the organization back under its spend cap.
    project = models.ForeignKey(
        "projects.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    model_name = models.CharField(max_length=200)
    unit = models.CharField(max_length=20, choices=Unit.choices)
    # Where these units start in the job's running count of the unit (0 for a one-shot request).
    start = models.BigIntegerField(default=0)
    quantity = models.BigIntegerField()
    cost = models.BigIntegerField()  # micro-dollars
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "unit", "model_name", "start"], name="unique_usage_per_job_unit_model_start"
            )
        ]
        indexes = [models.Index(fields=["organization", "created_at"])]

    def __str__(self) -> str:
        return f"{self.job_id} {self.unit}={self.quantity}"


# Each (organization, month) total is split over this many rows, by usage record id: a transaction
# that bills holds one of them until it commits, and the others' bills do not wait for it.
MONTH_SPEND_SHARDS = 16


class MonthSpend(models.Model):
    """What an organization was billed in a calendar month (UTC), in micro-dollars, as the sum of
    its shards: together they equal the sum of its usage records of that month, kept by a PostgreSQL
    trigger on every insert, update and delete of a record (migration 0008), so that no way of
    writing records can miss it. Admission reads these few rows instead of summing the month's
    records, which grow with every request."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="month_spend")
    month = models.DateField()  # the first day of the month
    shard = models.PositiveSmallIntegerField(default=0)  # usage record id % MONTH_SPEND_SHARDS
    spent = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "month", "shard"], name="one_spend_per_month_shard"
            )
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.month:%Y-%m} #{self.shard}: {self.spent}"


class Price(models.Model):
    """The price book: micro-dollars per 1,000,000 units of one model (or `default`). Editable in
    admin; seeded from settings.PRICE_BOOK. Fine-tuned models are priced as their base."""

    model_name = models.CharField(max_length=200)
    unit = models.CharField(max_length=20, choices=Unit.choices)
    micro_dollars_per_million = models.BigIntegerField()

    class Meta:
        ordering = ["model_name", "unit"]
        constraints = [models.UniqueConstraint(fields=["model_name", "unit"], name="unique_price")]

    def __str__(self) -> str:
        return f"{self.model_name} {self.unit}: {self.micro_dollars_per_million}/1M"


class Plan(models.Model):
    """Free, Pro, Team: what an organization may use and what it costs. Editable in admin."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=50)
    monthly_price = models.BigIntegerField(default=0)  # micro-dollars
    included_credit = models.BigIntegerField(default=0)  # micro-dollars of usage a month
    # A free plan cannot go past its credit; paid plans pay for usage past it (metered).
    usage_beyond_credit = models.BooleanField(default=False)
    requests_per_minute = models.PositiveIntegerField(default=60)  # per organization
    tokens_per_minute = models.PositiveIntegerField(default=100_000)
    key_requests_per_minute = models.PositiveIntegerField(default=60)  # per API key
    concurrent_fine_tunes = models.PositiveIntegerField(default=1)
    concurrent_batches = models.PositiveIntegerField(default=1)
    # Inference requests in flight at once per organization: each holds a web worker while it waits,
    # so one tenant at its limit leaves the rest of the capacity to the others.
    concurrent_requests = models.PositiveIntegerField(default=4)
    max_upload_bytes = models.BigIntegerField(default=10 * 1024 * 1024)
    allowed_models = models.JSONField(default=list, blank=True)  # patterns, e.g. ["*", "!openai:*"]
    stripe_price_id = models.CharField(max_length=100, blank=True, default="")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.name

    def allows(self, model_name: str) -> bool:
        """`allowed_models` holds shell patterns, applied in order; `!pattern` excludes. Empty: all."""
        from fnmatch import fnmatchcase

        allowed = not self.allowed_models
        for pattern in self.allowed_models:
            negated = pattern.startswith("!")
            if fnmatchcase(model_name, pattern.lstrip("!")):
                allowed = not negated
        return allowed


class Subscription(models.Model):
    """An organization's plan, mirrored from Stripe (Stripe is the truth for paid plans)."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="subscription")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=30, default="active")  # Stripe's subscription status
    stripe_customer_id = models.CharField(max_length=100, blank=True, default="", db_index=True)
    stripe_subscription_id = models.CharField(max_length=100, blank=True, default="", db_index=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    # When a payment fails: paid work goes on until this moment, then stops (data stays readable).
    grace_until = models.DateTimeField(null=True, blank=True)
    # The organization's own limits, micro-dollars a month.
    spend_limit = models.BigIntegerField(null=True, blank=True)
    alert_threshold = models.BigIntegerField(null=True, blank=True)
    alert_sent_for = models.CharField(max_length=7, blank=True, default="")  # "YYYY-MM"
    # The `created` time of the newest Stripe object applied, so an older event never wins.
    stripe_synced_at = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.organization} on {self.plan}"


class Invoice(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invoices")
    stripe_invoice_id = models.CharField(max_length=100, unique=True)
    status = models.CharField(max_length=30)
    amount_due = models.BigIntegerField(default=0)  # cents, as Stripe gives them
    currency = models.CharField(max_length=3, default="usd")
    hosted_invoice_url = models.URLField(max_length=500, blank=True, default="")
    created = models.DateTimeField()

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.stripe_invoice_id


class StripeEvent(models.Model):
    """Every webhook event id, stored once: a repeat is acknowledged and changes nothing.

    The webhook stores the verified event and hands its processing to a worker; `processed_at` is
    set in the transaction that applies it, so an unprocessed row is work still owed.
    """

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    created = models.BigIntegerField()
    # The verified event as Stripe sent it: the worker reads the object's id and customer from it.
    payload = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    # When its processing was last sent to a worker; the reaper sends it again when this gets old.
    published_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=300, blank=True, default="")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["published_at"],
                condition=models.Q(processed_at__isnull=True),
                name="stripe_event_unprocessed",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"


class MeterEvent(models.Model):
    """The outbox of usage for Stripe Billing Meters: one row per (organization, hour, unit).

    The identifier is derived from those three, so a resend after a crash (Stripe accepted it but
    we never marked it sent) is recognised by Stripe as the same event.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="meter_events")
    hour = models.DateTimeField()
    unit = models.CharField(max_length=20, choices=Unit.choices)
    value = models.BigIntegerField()  # micro-dollars of cost in that hour, as metered
    identifier = models.CharField(max_length=100, unique=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["hour", "id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "hour", "unit"], name="unique_meter_hour")
        ]

    def __str__(self) -> str:
        return self.identifier
