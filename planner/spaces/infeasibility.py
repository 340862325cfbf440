"""Why no plan exists: the binding resource, with numbers, in words a user can act on.

Every solver and the public API explain an empty space through here, so that the same cause reads
the same everywhere (memory first: it needs no search).
"""

from __future__ import annotations

from planner.domain.instance import Instance
from planner.domain.units import GB


def capacity_check(instance: Instance) -> str | None:
    """Why no plan can exist at all: the model's weights exceed the fleet's memory; or None.

    Parameters
    ----------
    instance
        The instance to check.

    Returns
    -------
    str or None
        ``"infeasible: the model ... needs X GB ..., the fleet has Y GB ..."``, or None when the
        weights fit the fleet's memory in all (which does not yet mean that a plan exists).
    """
    m = instance.model
    weights = m.total_params * m.dtype_bytes
    have = instance.total_memory_bytes
    if weights > have:
        return (f"infeasible: the model {m.name!r} needs {weights / GB:.1f} GB for its weights alone, "
                f"the fleet has {have / GB:.1f} GB of memory in all ({len(instance.devices)} devices)")
    return None


def explain_violations(violations: list, prefix: str) -> str:
    """``prefix`` and the first three violations of a plan (why a space's best candidate failed)."""
    shown = "; ".join(str(v) for v in violations[:3])
    return f"{prefix}: {shown}" if shown else prefix
