"""Helper processes that tests start as workers (``python -m tests.support.<name>``, or
as a job's entrypoint): small scripts on the public runtime API, each saying in its
docstring which test uses it and what it does."""
