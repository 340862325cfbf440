"""The runtime: a plan run as a distributed program, one process per planned device (``moeplan run``).

Processes talk with torch.distributed (gloo) over emulated links (each link's bandwidth, series and
RTT applied to the bytes sent: :mod:`~planner.runtime.transport`); stages send hidden states
(codec latents at compressed cuts) to the next stage, remote experts are calls to the device that
holds them (:mod:`~planner.runtime.stage`), requests are batched continuously into the plan's
micro-batches (:mod:`~planner.runtime.scheduler`, :mod:`~planner.runtime.kv`). The launcher
(:mod:`~planner.runtime.launch`) starts the processes with torch.multiprocessing, keeps the ledger of
requests and survives a lost process or link by re-planning; the same worker runs under torchrun
(:mod:`~planner.runtime.worker`). What a run measured (:mod:`~planner.runtime.report`) is set beside
the cost model's and the simulator's predictions (:mod:`~planner.runtime.fidelity`).

Needs the ``torch`` extra; nothing but the CLI imports it. Names load lazily. See ``docs/runtime.md``.
"""

import importlib

_EXPORTS = {
    "RunOptions": "launch", "RunResult": "launch", "run": "launch", "RunMeasurement": "report", "compare": "fidelity",
    "fidelity_table": "fidelity", "measured_table": "report", "make_requests": "inputs", "load_model": "inputs",
    "prepare": "inputs", "topology": "topology", "check_capacity": "topology",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'planner.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"planner.runtime.{_EXPORTS[name]}"), name)
