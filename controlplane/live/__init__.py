"""Realtime: what reaches browsers and agents over WebSocket as it happens.

* ``channels``: group names, message and frame types, and publishing (with the per-job
  frame log a reconnecting browser replays from). It imports no app of the control
  plane, so every app may publish through it.
* ``consumers``: the browser (``/ws/jobs/{id}/``) and agent (``/ws/agent/``) consumers,
  which only translate between channel-layer messages and frames and call the jobs
  app's services and selectors (an entry point, like the apps' ``apis``).
* ``auth``: the agents' socket authentication (node credential).

The app's name stays ``live``; it has no models (its migrations created the metric
tables, which the metrics app owns since metrics/0001).
"""
