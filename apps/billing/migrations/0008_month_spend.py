import django.db.models.deletion
from django.db import migrations, models

# The month of a record is its created_at's month in UTC, as `apps.billing.quotas.month_start`; its
# shard is its id modulo MONTH_SPEND_SHARDS (16), which never changes.
# A delete only lowers an existing row: an organization being deleted has its rows deleted too, in
# an order Django chooses, and a row made again then would point at an organization that is gone.
TRIGGER = """
CREATE FUNCTION billing_month_spend() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE billing_monthspend SET spent = spent - OLD.cost
        WHERE organization_id = OLD.organization_id
          AND month = date_trunc('month', OLD.created_at AT TIME ZONE 'UTC')::date
          AND shard = OLD.id % 16;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO billing_monthspend (organization_id, month, shard, spent)
        VALUES (
            NEW.organization_id, date_trunc('month', NEW.created_at AT TIME ZONE 'UTC')::date, NEW.id % 16,
            NEW.cost
        )
        ON CONFLICT (organization_id, month, shard) DO UPDATE SET spent = billing_monthspend.spent + EXCLUDED.spent;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_month_spend
AFTER INSERT OR DELETE OR UPDATE OF cost, organization_id, created_at ON billing_usagerecord
FOR EACH ROW EXECUTE FUNCTION billing_month_spend();
INSERT INTO billing_monthspend (organization_id, month, shard, spent)
SELECT organization_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date, id % 16, SUM(cost)
FROM billing_usagerecord GROUP BY 1, 2, 3;
"""
UNDO = """
DROP TRIGGER billing_month_spend ON billing_usagerecord;
DROP FUNCTION billing_month_spend();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0008_invitation_one_open_per_address'),
        ('billing', '0007_every_organization_has_a_subscription'),
    ]

    operations = [
        migrations.CreateModel(
            name='MonthSpend',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('month', models.DateField()),
                ('shard', models.PositiveSmallIntegerField(default=0)),
                ('spent', models.BigIntegerField(default=0)),
                ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='month_spend', to='accounts.organization')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('organization', 'month', 'shard'), name='one_spend_per_month_shard')],
            },
        ),
        migrations.RunSQL(TRIGGER, UNDO),
    ]
