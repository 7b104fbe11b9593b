"""Training scripts that use only the public runtime API (:mod:`agent.runtime`)."""
