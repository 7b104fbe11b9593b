"""The node side of adaptrain, three deployables on one vocabulary: :mod:`agent.protocol`
(the wire vocabulary, standard library only), :mod:`agent.daemon` (the per-node agent,
``python -m agent``) and :mod:`agent.runtime` (what training code imports), with the
native collective library in :mod:`agent.native`."""
