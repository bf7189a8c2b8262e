"""The whole-pipeline demo (synth → train → export → store) behind `make serve` / `make demo-model`.

It imports ``training`` and ``export`` (so torch), which is why it is a top-level package of its own
and not part of ``serving/``: the bento (bentofile.yaml ``include``) and the Docker image copy only
``serving/`` and ``maskdata/``. Run it from the repository root as ``python -m demo``.
"""
