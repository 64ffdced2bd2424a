"""A data migration that writes through the default alias, as many third-party apps' do: it
must run as the owner (manage.py rls_migrate; the pytest plugin builds the test database so)."""

from django.db import migrations


def shared_labels(apps, schema_editor):
    Label = apps.get_model("shop", "Label")
    for name in ("urgent", "archived"):
        Label.objects.create(company=None, name=name)  # no .using(): the default alias


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]

    operations = [migrations.RunPython(shared_labels, migrations.RunPython.noop)]
