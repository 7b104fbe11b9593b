"""Moving the test database's schema between migrations, for the data-migration tests."""

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate(targets):
    """Migrate to ``targets`` ([(app, migration)], forwards or backwards); the historical
    models there, as ``apps``."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def migrate_to_latest() -> None:
    """Every app at its latest migration, as the other tests expect the schema."""
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
