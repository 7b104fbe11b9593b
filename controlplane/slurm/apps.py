from django.apps import AppConfig


class SlurmConfig(AppConfig):
    name = "controlplane.slurm"
    label = "slurm"
    default_auto_field = "django.db.models.BigAutoField"
