import re

from django.db import migrations, models


def name_based_slug(name):
    # Exactly how fine-tuned model ids were built from an organization's name until now, so that
    # new models of an existing organization carry the same middle part as its earlier ones.
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "org"


def slugs_from_names(apps, schema_editor):
    Organization = apps.get_model("accounts", "Organization")
    taken = set()
    for organization in Organization.objects.order_by("id").iterator():
        base = name_based_slug(organization.name)
        slug, n = base, 1
        while slug in taken:  # two organizations with one name: the older keeps the name-based slug
            n += 1
            slug = f"{base[: 40 - len(str(n)) - 1]}-{n}"
        taken.add(slug)
        Organization.objects.filter(pk=organization.pk).update(slug=slug)


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0005_organization_created_by"),
    ]

    operations = [
        migrations.AddField(
            model_name="organization",
            name="slug",
            field=models.CharField(max_length=40, null=True),
        ),
        migrations.AddField(
            model_name="organization",
            name="slug_chosen_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(slugs_from_names, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="organization",
            name="slug",
            field=models.CharField(max_length=40, unique=True),
        ),
    ]
