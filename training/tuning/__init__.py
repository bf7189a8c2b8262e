"""``mask-tune``: Optuna studies over ``mask-train`` settings (the CLI, the worker, the search space,
the shared storage, the study's report)."""
