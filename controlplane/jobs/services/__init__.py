"""The writes of the jobs app, one module per noun; callers import the module they need.

Bottom to top: ``membership`` (cluster versions and what a change of members does to a
job), then ``elastic`` (scale_workers, joiners given up on, grows back to the wanted
size), ``scheduling`` (placing pending jobs), ``jobs`` (create, cancel, restart),
``commands`` (issue and the agents' answers), ``reports`` (what agents report about
their workers) and ``nodes`` (enrolment, heartbeats, lost nodes). See the package
docstring of ``controlplane.jobs`` for the whole layering.
"""
