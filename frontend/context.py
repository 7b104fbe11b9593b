"""Template context every page gets: the shared vocabulary (``agent.protocol.vocabulary``),
rendered once into the page as JSON and read by ``static/frontend/vocabulary.js``, so the
browser spells strategies, actions and metric names exactly as the server does."""

from agent.protocol import vocabulary as _vocabulary

_VOCABULARY = _vocabulary.vocabulary()


def vocabulary(request):
    return {"vocabulary": _VOCABULARY}
