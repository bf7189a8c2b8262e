"""The service with BentoML's own request-timeout middleware put back: the state before
serving/request_timeout.py, for bench.memory_soak's comparison only (never shipped).

    bentoml serve bench.upstream_timeout_service:MaskClassifier
"""
from bentoml._internal.server.http import traffic  # the name serving.request_timeout.install() rebinds

from serving import request_timeout
from serving.service import MaskClassifier  # importing it installs RequestTimeout

# the app is built after this module is imported, so BentoML builds its own class again
traffic.TimeoutMiddleware = request_timeout.replaced

__all__ = ["MaskClassifier"]
