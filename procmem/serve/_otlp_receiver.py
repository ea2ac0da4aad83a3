"""``POST /v1/traces`` (with ``[telemetry] receiver = true``): an OTLP/HTTP receiver. Its GenAI spans become calls
and episodes of the caller's tenant, as ``procmem import`` makes them (:mod:`procmem.serve._otlp`); the gateway's
memory worker verifies and records them. Answers with an ExportTraceServiceResponse whose ``partial_success``
counts and names the spans it could not import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from procmem.core import ProcmemError
from procmem.serve.ingest import LineError, record_item
from procmem.serve.protocol import ApiError

if TYPE_CHECKING:
    from procmem.serve.app import Gateway

__all__ = ["receive_traces"]


async def receive_traces(gateway: Gateway, request: Request) -> Response:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    from procmem.serve._otlp import decode_request, items_from_requests

    tenant = gateway.tenant(request, "feedback")
    content_type = request.headers.get("content-type", "application/x-protobuf").lower()
    if "json" not in content_type and "protobuf" not in content_type:
        raise ApiError(415, f"unsupported Content-Type {content_type!r}", param="Content-Type",
                       code="unsupported_media_type", fix="send application/x-protobuf or application/json (OTLP)")
    body = await gateway._body(request)
    try:
        export = decode_request(body, content_type, "body")
    except ProcmemError as err:
        raise ApiError(400, err.message, fix=err.fix or "", code="invalid_otlp") from err

    def ingest() -> list[LineError]:
        errors: list[LineError] = []
        for item in items_from_requests([("body", export)]):
            if isinstance(item, LineError):
                errors.append(item)
            else:
                record_item(gateway.log, tenant, item)
        gateway.worker.wake()
        return errors

    errors = await gateway._run(ingest)
    reply = ExportTraceServiceResponse()
    if errors:
        reply.partial_success.rejected_spans = len(errors)
        reply.partial_success.error_message = "; ".join(str(e) for e in errors[:5])[:2000]
    if "json" in content_type:
        return Response(json_format.MessageToJson(reply), media_type="application/json")
    return Response(reply.SerializeToString(), media_type="application/x-protobuf")
