from django.db import migrations

# The catalog's generation bases learn from preference pairs too (DPO). sync_catalog leaves
# existing rows alone, so the method is added here where the row still offers what it shipped with.
NAMES = ("smollm2-135m-instruct",)


def add_dpo(apps, schema_editor):
    Model = apps.get_model("registry", "Model")
    for model in Model.objects.filter(name__in=NAMES, organization=None):
        methods = list((model.limits or {}).get("methods") or [])
        if methods == ["supervised"]:
            model.limits = {**model.limits, "methods": [*methods, "dpo"]}
            model.save(update_fields=["limits"])


def remove_dpo(apps, schema_editor):
    Model = apps.get_model("registry", "Model")
    for model in Model.objects.filter(name__in=NAMES, organization=None):
        methods = [m for m in (model.limits or {}).get("methods") or [] if m != "dpo"]
        model.limits = {**(model.limits or {}), "methods": methods}
        model.save(update_fields=["limits"])


class Migration(migrations.Migration):
    dependencies = [("registry", "0005_embedding_models")]
    operations = [migrations.RunPython(add_dpo, remove_dpo)]
