import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def creators_from_first_members(apps, schema_editor):
    # `create_organization` makes its creator the first member, in the same transaction.
    Organization = apps.get_model("accounts", "Organization")
    Membership = apps.get_model("accounts", "Membership")
    for organization in Organization.objects.filter(created_by__isnull=True).iterator():
        first = Membership.objects.filter(organization=organization).order_by("created_at", "id").first()
        if first is not None:
            Organization.objects.filter(pk=organization.pk).update(created_by_id=first.user_id)


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0004_invitation_revoked_at'),
    ]

    operations = [
        migrations.AddField(
            model_name='organization',
            name='created_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.RunPython(creators_from_first_members, migrations.RunPython.noop),
    ]
