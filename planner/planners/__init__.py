"""Every solver of whole instances, registered in :mod:`solvers.registry` when this package is imported.

A new solver is one module here plus one line below. Solvers find each other through the
registry (``registry.get("route-aware", problem="instance")``), never by importing each other.
"""

from planner.planners import baselines, dp, edgeshard, eplb, exact, local_search, route_aware  # noqa: F401  (registers them)
