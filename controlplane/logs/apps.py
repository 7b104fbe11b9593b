from django.apps import AppConfig


class LogsConfig(AppConfig):
    name = "controlplane.logs"
    label = "logs"
