"""Development tooling, not part of the installed package: finding or starting PostgreSQL
and Redis (:mod:`devtools.backing_services`), starting the whole stack as in production
(:mod:`devtools.devstack`), and the two quick-start commands' Python halves
(:mod:`devtools.demo`, :mod:`devtools.run_tests`, run by ``scripts/demo`` and
``scripts/test``)."""
