from django.db import migrations


def seed(apps, schema_editor):
    from apps.registry.catalog import sync_catalog

    sync_catalog(apps.get_model("registry", "Model"))


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
