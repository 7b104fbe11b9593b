"""Code bundles: a user's project packed by ``adaptrain run`` (:mod:`adaptrain.bundle`),
stored once under its sha256 digest through Django's storage API (the ``bundles`` entry
of ``STORAGES``: a local directory by default, S3-compatible storage by setting), named by
jobs and fetched by the agents that run them. Below ``jobs`` in the app order: it knows
nothing of jobs; jobs name a bundle by its digest."""
