"""The browser UI: Django templates plus plain JavaScript served as static files.

Nothing is loaded from the internet: the chart code lives in ``static/frontend/``.
"""
