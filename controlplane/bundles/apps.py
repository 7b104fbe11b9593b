from django.apps import AppConfig


class BundlesConfig(AppConfig):
    name = "controlplane.bundles"
    label = "bundles"
