"""The aiohttp application: protocol, CORS, limits, authentication, audit.

Middlewares, outermost first, each with one job: request id and timing → CORS
(on every response, errors included) → error mapping (one JSON error shape).
Authentication and authorisation happen in the codec handler, which is the only
route that reveals data; health and metrics routes reveal none.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from opentelemetry.sdk.trace import SpanProcessor
from temporalio.api.common.v1 import Payload

from temporal_shield.codec import KeyProvider, KeyProviderError, ShieldError
from temporal_shield.converter import ShieldCodec, ShieldConfig, build_codec

from ._audit import AuditError, AuditLog
from ._auth import Authenticator, AuthError
from ._config import ServerConfig
from ._identity import DEV_IDENTITY, Identity
from ._policy import Policy
from ._service import CodecService, Forbidden, Outcome
from ._telemetry import TRACE_ID, Telemetry

log = logging.getLogger("temporal_shield.server")

ALLOW_HEADERS = "content-type, x-namespace, authorization, authorization-extras"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ShieldError):
    """The request is malformed (HTTP 400)."""


class TooLarge(ShieldError):
    """The request exceeds a size limit (HTTP 413)."""


@dataclass
class State:
    """Everything the handlers share, stored under :data:`STATE`."""

    config: ServerConfig
    shield: ShieldConfig
    codec: ShieldCodec
    service: CodecService
    authenticator: Authenticator | None
    audit: AuditLog | None
    telemetry: Telemetry


STATE: web.AppKey[State] = web.AppKey("temporal_shield_state", State)
REQUEST_ID = web.RequestKey("temporal_shield_request_id", str)
STARTED = web.RequestKey("temporal_shield_started", float)


def _error(status: int, code: str, message: str, request: web.Request) -> web.Response:
    return web.json_response(
        {"error": code, "message": message, "request_id": request.get(REQUEST_ID, "")},
        status=status,
    )


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (echoed as ``X-Request-Id``) and a start time."""
    request[REQUEST_ID] = uuid.uuid4().hex
    request[STARTED] = time.perf_counter()
    response = await handler(request)
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    return response


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights and put CORS headers on every response, errors included."""
    config = request.app[STATE].config
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin in config.cors_origins
    if request.method == "OPTIONS":
        if not allowed:
            response: web.StreamResponse = _error(403, "cors", "origin not allowed", request)
        else:
            response = web.Response(status=204)
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Max-Age"] = "600"
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised by aiohttp itself (404, 405, 413)
            response = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, request)
    response.headers["Vary"] = "Origin"
    if allowed:
        assert origin is not None
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "X-Request-Id"
        if config.cors_credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to one JSON shape; never a stack trace, never a secret."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except AuthError as exc:
        return _error(401, "unauthorized", str(exc), request)
    except Forbidden as exc:
        return _error(403, "forbidden", str(exc), request)
    except BadRequest as exc:
        return _error(400, "bad_request", str(exc), request)
    except TooLarge as exc:
        return _error(413, "too_large", str(exc), request)
    except AuditError:
        log.error("audit sink failed; refusing to return data", exc_info=False)
        return _error(503, "audit_unavailable", "audit log unavailable; no data returned", request)
    except KeyProviderError as exc:
        return _error(503, "kms_unavailable", str(exc), request)
    except Exception as exc:
        # Type and location only: an exception message could carry payload data.
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        log.error(
            "unhandled %s at %s in request %s", type(exc).__name__, where, request.get(REQUEST_ID)
        )
        return _error(500, "internal", "internal error", request)


def _namespace(request: web.Request) -> str | None:
    header = request.headers.get("X-Namespace", "").strip()
    if header and header != "undefined":
        return header
    parts = [p for p in request.path.split("/") if p]
    return parts[-2] if len(parts) >= 2 else None


async def _read_payloads(request: web.Request, config: ServerConfig) -> list[Payload]:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"request body over {config.max_body_bytes} bytes") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("payloads", []), list):
        raise BadRequest('body must be {"payloads": [...]}')
    if len(doc.get("payloads", [])) > config.max_payloads:
        raise BadRequest(f"more than {config.max_payloads} payloads in one request")
    for item in doc.get("payloads", []):
        data = item.get("data", "") if isinstance(item, dict) else ""
        if isinstance(data, str) and len(data) * 3 // 4 > config.max_payload_bytes:
            raise TooLarge(f"a payload is over {config.max_payload_bytes} bytes")
    return [_payload(item) for item in doc.get("payloads", [])]


def _payload(item: object) -> Payload:
    """One ``temporal.api.common.v1.Payload`` from its protobuf-JSON form.

    Written out rather than using ``json_format.ParseDict``, which costs more than
    the decryption on this hot path; unknown fields are ignored like the parser's
    ``ignore_unknown_fields``.
    """
    if not isinstance(item, dict):
        raise BadRequest("each payload must be an object")
    metadata = item.get("metadata", {})
    data = item.get("data", "")
    if not isinstance(metadata, dict) or not isinstance(data, str):
        raise BadRequest("payload metadata must be an object and data a base64 string")
    try:
        decoded = {str(k): base64.b64decode(v, validate=True) for k, v in metadata.items()}
        return Payload(metadata=decoded, data=base64.b64decode(data, validate=True))
    except (binascii.Error, TypeError, ValueError):
        raise BadRequest("payload metadata and data must be base64") from None


def _payloads_json(payloads: list[Payload]) -> dict[str, Any]:
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in payloads
        ]
    }


def _audit_event(
    request: web.Request,
    *,
    operation: str,
    namespace: str | None,
    identity: Identity | None,
    outcome: Outcome | None,
    decision: str,
    reason: str,
    status: int,
) -> dict[str, Any]:
    outcome = outcome or Outcome()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "request_id": request.get(REQUEST_ID, ""),
        "trace_id": request.get(TRACE_ID, ""),
        "subject": identity.subject if identity else "",
        "email": identity.email if identity else "",
        "token_id": identity.token_id if identity else "",
        "client": request.remote or "",
        "origin": request.headers.get("Origin", ""),
        "namespace": namespace or "",
        "operation": operation,
        "decoded": outcome.decoded,
        "encoded": outcome.encoded,
        "denied": outcome.denied,
        "passed_through": outcome.passed_through,
        "failed": outcome.failed,
        "key_ids": sorted(outcome.key_ids),
        "classifications": sorted(outcome.classifications),
        "roles": sorted(outcome.roles),
        "decision": decision,
        "reason": reason or "; ".join(sorted(outcome.reasons)),
        "status": status,
        "latency_ms": round((time.perf_counter() - request[STARTED]) * 1000, 3),
    }


async def codec_handler(request: web.Request) -> web.StreamResponse:
    """``POST .../decode`` and ``POST .../encode`` (matched on the last path segment)."""
    state = request.app[STATE]
    operation = request.path.rstrip("/").rsplit("/", 1)[-1]
    if operation == "download":
        return _error(404, "not_supported", "download is not supported", request)
    if operation not in ("decode", "encode"):
        return _error(404, "not_found", "no such endpoint", request)
    namespace = _namespace(request)
    identity: Identity | None = None
    outcome: Outcome | None = None

    def audit(decision: str, status: int, reason: str = "") -> None:
        state.telemetry.request_done(operation, decision, status, outcome, request[STARTED])
        if state.audit is not None:
            state.audit.record(
                _audit_event(
                    request,
                    operation=operation,
                    namespace=namespace,
                    identity=identity,
                    outcome=outcome,
                    decision=decision,
                    reason=reason,
                    status=status,
                )
            )

    with state.telemetry.span(f"codec {operation}", request) as span:
        try:
            if state.authenticator is None:
                identity = DEV_IDENTITY
            else:
                identity = await state.authenticator.authenticate(request.headers)
            payloads = await _read_payloads(request, state.config)
            if operation == "decode":
                result, outcome = await state.service.decode(identity, namespace, payloads)
            else:
                result, outcome = await state.service.encode(identity, namespace, payloads)
        except AuthError as exc:
            audit("deny", 401, f"unauthenticated: {exc}")
            raise
        except Forbidden as exc:
            outcome = exc.outcome
            audit("deny", 403, str(exc))
            raise
        except (BadRequest, TooLarge) as exc:
            audit("deny", 413 if isinstance(exc, TooLarge) else 400, str(exc))
            raise
        except KeyProviderError as exc:
            audit("error", 503, str(exc))
            raise
        except Exception as exc:
            # Unexpected failures are decisions too: recorded, then a bare 500.
            audit("error", 500, f"internal error: {type(exc).__name__}")
            raise
        span.set_attribute("temporal_shield.decision", outcome.decision)
        # The record is written before any plaintext leaves; a failed write is a 503.
        audit(outcome.decision, 200)
        return web.json_response(_payloads_json(result))


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves requests."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: every key provider answers."""
    try:
        await request.app[STATE].codec.envelope.keys.check()
    except ShieldError as exc:
        return _error(503, "not_ready", str(exc), request)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the OpenTelemetry metrics."""
    body, content_type = request.app[STATE].telemetry.prometheus()
    return web.Response(body=body, headers={"Content-Type": content_type})


def create_app(
    config: ServerConfig,
    shield: ShieldConfig,
    *,
    providers: list[KeyProvider] | None = None,
    audit_stdout: Any = None,
    span_processor: SpanProcessor | None = None,
) -> web.Application:
    """Build the codec server application.

    Args:
        config: Server settings (validated: authentication is mandatory unless
            ``insecure_dev``).
        shield: Converter settings (keys, classification, limits).
        providers: Key providers to use instead of those ``shield`` names (tests).
        audit_stdout: Stream for the stdout audit sink (tests); default stdout.
        span_processor: Extra span processor (tests); OTLP comes from ``OTEL_*``.

    Raises:
        ConfigError: invalid configuration, unreadable policy, keys or audit log.
    """
    codec = build_codec(shield, providers=providers)
    policy = Policy.load(Path(config.policy_file)) if config.policy_file else None
    authenticator = (
        Authenticator(
            config.auth,
            groups_claim=policy.groups_claim if policy else "groups",
            permissions_claim=policy.permissions_claim if policy else "permissions",
        )
        if config.auth.enabled and not config.insecure_dev
        else None
    )
    audit = (
        AuditLog(config.audit, stdout=audit_stdout)
        if (config.audit.file or config.audit.stdout)
        else None
    )
    telemetry = Telemetry(codec.envelope.keys.stats, span_processor=span_processor)
    keys = codec.envelope.keys
    keys.providers = [telemetry.traced(p) for p in keys.providers]
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[request_id_middleware, cors_middleware, error_middleware],
    )
    app[STATE] = State(
        config=config,
        shield=shield,
        codec=codec,
        service=CodecService(codec, shield, policy),
        authenticator=authenticator,
        audit=audit,
        telemetry=telemetry,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if config.insecure_dev:
            log.warning(
                "INSECURE DEV MODE: the codec server decrypts for anyone who can reach it. "
                "Never use --insecure-dev outside local development."
            )
        yield
        if audit is not None:
            audit.close()
        # Exporters flush over blocking HTTP: keep the event loop free meanwhile.
        await asyncio.to_thread(telemetry.shutdown)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/{tail:.*}", codec_handler)
    return app
