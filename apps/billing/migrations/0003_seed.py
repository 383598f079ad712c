from django.db import migrations


def seed(apps, schema_editor):
    from apps.billing.seed import seed_billing

    seed_billing(apps.get_model("billing", "Plan"), apps.get_model("billing", "Price"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_plans_prices_subscriptions")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
