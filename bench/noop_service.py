"""The framework's ceiling, for ``bench.rest``: a BentoML endpoint that takes the same
multipart upload as ``/predict`` (BentoML parses it and writes its temporary file) and answers a
constant, so the gap between this and the service is what decoding, the model and our code cost.

    bentoml serve bench.noop_service:Noop --port 3002
"""
from __future__ import annotations

from pathlib import Path

import bentoml


@bentoml.service(name="noop", traffic={"timeout": 60})
class Noop:
    @bentoml.api(route="/predict")
    async def predict(self, image: Path) -> dict:
        return {"ok": True}
