"""The jobs app's REST endpoints: ``jobs`` (jobs and their audit events), ``runs`` (runs
and commands) and ``agents`` (nodes and the agents' own endpoints)."""
