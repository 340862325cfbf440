"""The shipped reference MoE model: its training corpus (:mod:`.corpus`) and training script (:mod:`.train`).

The trained weights live in ``planner/data/reference-moe/`` (see its ``README.md``).
"""
