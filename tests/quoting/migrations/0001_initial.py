from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [("sites", "0002_alter_domain_unique")]

    operations = [
        migrations.RunSQL("CREATE SCHEMA other", "DROP SCHEMA other"),
        migrations.CreateModel(
            name="MixedCase",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("body", models.TextField()),
                (
                    "site",
                    models.ForeignKey(db_column="SiteId", on_delete=models.deletion.CASCADE, to="sites.site"),
                ),
            ],
            options={"db_table": "MyTable"},
        ),
        migrations.CreateModel(
            name="Elsewhere",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("body", models.TextField()),
                ("site", models.ForeignKey(on_delete=models.deletion.CASCADE, to="sites.site")),
            ],
            options={"db_table": '"other"."thing"'},
        ),
        migrations.CreateModel(
            name="ElsewhereChild",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("label", models.TextField()),
                ("parent", models.ForeignKey(on_delete=models.deletion.CASCADE, to="quoting.elsewhere")),
            ],
            options={"db_table": '"other"."Child"'},
        ),
    ]
