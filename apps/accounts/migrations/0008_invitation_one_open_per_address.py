from django.db import migrations, models
from django.db.models.functions import Lower
from django.utils import timezone


class Migration(migrations.Migration):
    # Apart from 0006, whose data changes must be committed before the table is altered.

    dependencies = [
        ("accounts", "0007_invitation_sent_at"),
    ]

    operations = [
        migrations.AlterField(
            model_name="invitation",
            name="sent_at",
            field=models.DateTimeField(default=timezone.now),
        ),
        migrations.AddConstraint(
            model_name="invitation",
            constraint=models.UniqueConstraint(
                models.F("organization"),
                Lower("email"),
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="one_open_invitation_per_address",
            ),
        ),
    ]
