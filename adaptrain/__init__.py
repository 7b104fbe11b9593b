"""adaptrain's client side, standard library only: the REST client (:mod:`adaptrain.rest`)
shared by the ``adaptrain`` command (:mod:`adaptrain.cli`), the node agent and the
development tooling."""
