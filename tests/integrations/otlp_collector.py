"""A minimal OTLP/HTTP trace collector on loopback: it accepts ``POST /v1/traces`` (protobuf, gzip or not), decodes
each body as an ExportTraceServiceRequest with opentelemetry-proto, and keeps them."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Collector:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.bad: list[str] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or "protobuf" not in self.headers.get("content-type", ""):
                    collector.bad.append(f"{self.path} {self.headers.get('content-type')}")
                    self.send_response(400)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector._lock:
                    collector.requests.append(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[tuple[Any, Any]]:
        """Every span received, with its resource: ``(resource, span)``."""
        with self._lock:
            return [(rs.resource, span) for request in self.requests for rs in request.resource_spans
                    for ss in rs.scope_spans for span in ss.spans]

    def merged(self) -> ExportTraceServiceRequest:
        """Everything received, as one request (what an OTLP file exporter would have written)."""
        merged = ExportTraceServiceRequest()
        with self._lock:
            for request in self.requests:
                merged.resource_spans.extend(request.resource_spans)
        return merged


def attrs(span: Any) -> dict[str, Any]:
    """A span's (or event's) attributes as plain values."""
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            out[kv.key] = getattr(value, kind) if kind else None
    return out
