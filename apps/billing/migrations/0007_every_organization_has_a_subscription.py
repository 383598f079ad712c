from django.db import migrations


def subscribe_the_rest_to_free(apps, schema_editor):
    """Organizations made before onboarding created their subscription, and never billed since, get
    the Free plan they were already treated as being on: `subscription_for` only reads from now on."""
    Organization = apps.get_model("accounts", "Organization")
    Plan = apps.get_model("billing", "Plan")
    Subscription = apps.get_model("billing", "Subscription")
    missing = Organization.objects.filter(subscription__isnull=True)
    if not missing.exists():
        return
    free = Plan.objects.get(slug="free")  # seeded by 0003_seed
    Subscription.objects.bulk_create([Subscription(organization=org, plan=free) for org in missing])


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0005_organization_created_by"),
        ("billing", "0006_billing_as_work_is_done"),
    ]
    operations = [migrations.RunPython(subscribe_the_rest_to_free, migrations.RunPython.noop)]
