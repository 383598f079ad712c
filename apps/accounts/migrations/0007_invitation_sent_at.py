from django.db import migrations, models
from django.utils import timezone


def start_lifetimes_at_creation(apps, schema_editor):
    """Existing invitations were sent when they were created; of several open invitations to one
    address, the newest stays open and the older ones are revoked (their links stop working)."""
    Invitation = apps.get_model("accounts", "Invitation")
    Invitation.objects.update(sent_at=models.F("created_at"))
    seen = set()
    for invitation in Invitation.objects.filter(accepted_at=None, revoked_at=None).order_by("-created_at", "-id"):
        key = (invitation.organization_id, invitation.email.lower())
        if key in seen:
            Invitation.objects.filter(pk=invitation.pk).update(revoked_at=timezone.now())
        seen.add(key)


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0006_organization_slug"),
    ]

    operations = [
        migrations.AddField(
            model_name="invitation",
            name="sent_at",
            field=models.DateTimeField(null=True),
        ),
        migrations.AddField(
            model_name="invitation",
            name="send_count",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.RunPython(start_lifetimes_at_creation, migrations.RunPython.noop),
    ]
