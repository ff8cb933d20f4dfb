"""The gRPC transport of webhooks (tollgate.billing.v1.WebhookService): protobuf in, WebhookAdmin call, protobuf out.

Its own service (webhooks.proto) beside BillingService, on the same server, with the same caller table rule
(only ingress, which serves the admin API) and the same error mapping.
"""

from __future__ import annotations

import grpc
from tollgate.billing.v1 import webhooks_pb2 as wpb
from tollgate.billing.v1 import webhooks_pb2_grpc as wpb_grpc
from tollgate_common.grpc import abort
from tollgate_common.internal_auth import InternalAuth, guard_servicer
from tollgate_common.telemetry import attach_traceparent

from .errors import BillingError
from .webhook_admin import DeliveryRecord, WebhookAdmin, WebhookRecord

__all__ = ["CALLERS", "SERVICE_NAME", "WebhookServicer"]

SERVICE_NAME = "tollgate.billing.v1.WebhookService"

CALLERS: dict[str, frozenset[str]] = {
    name: frozenset({"ingress"})
    for name in ("SetWebhook", "GetWebhook", "DeleteWebhook", "RotateWebhookSecret", "ListWebhookDeliveries")
}


def webhook_message(hook: WebhookRecord) -> wpb.Webhook:
    return wpb.Webhook(account_id=hook.account_id, url=hook.url, events=hook.events, revision=hook.revision,
                       secret_version=hook.secret_version, created_at_unix_ms=hook.created_at_unix_ms,
                       updated_at_unix_ms=hook.updated_at_unix_ms)


def delivery_message(d: DeliveryRecord) -> wpb.WebhookDelivery:
    return wpb.WebhookDelivery(
        delivery_id=d.delivery_id, event_id=d.event_id, event_type=d.event_type, status=d.status,
        attempts=d.attempts, last_status_code=d.last_status_code, last_error=d.last_error,
        next_attempt_at_unix_ms=d.next_attempt_at_unix_ms, created_at_unix_ms=d.created_at_unix_ms,
        delivered_at_unix_ms=d.delivered_at_unix_ms or 0,
        attempt_log=[wpb.WebhookAttempt(attempt=a.attempt, at_unix_ms=a.at_unix_ms, status_code=a.status_code,
                                        error=a.error, duration_ms=a.duration_ms) for a in d.attempt_log])


@guard_servicer(CALLERS, wpb_grpc.WebhookServiceServicer)
class WebhookServicer(wpb_grpc.WebhookServiceServicer):  # type: ignore[misc]
    def __init__(self, admin: WebhookAdmin, internal_auth: InternalAuth) -> None:
        self.admin = admin
        self.internal_auth = internal_auth

    async def SetWebhook(self, request: wpb.SetWebhookRequest,
                         context: grpc.aio.ServicerContext) -> wpb.WebhookSecretReply:
        async with _mapped(context):
            hook, secret = await self.admin.set_webhook(request.account_id, request.url, list(request.events))
        return wpb.WebhookSecretReply(webhook=webhook_message(hook), secret=secret)

    async def GetWebhook(self, request: wpb.GetWebhookRequest, context: grpc.aio.ServicerContext) -> wpb.Webhook:
        async with _mapped(context):
            return webhook_message(await self.admin.get_webhook(request.account_id))

    async def DeleteWebhook(self, request: wpb.DeleteWebhookRequest,
                            context: grpc.aio.ServicerContext) -> wpb.Webhook:
        async with _mapped(context):
            return webhook_message(await self.admin.delete_webhook(request.account_id))

    async def RotateWebhookSecret(self, request: wpb.RotateWebhookSecretRequest,
                                  context: grpc.aio.ServicerContext) -> wpb.WebhookSecretReply:
        async with _mapped(context):
            hook, secret = await self.admin.rotate_secret(request.account_id)
        return wpb.WebhookSecretReply(webhook=webhook_message(hook), secret=secret)

    async def ListWebhookDeliveries(self, request: wpb.ListWebhookDeliveriesRequest,
                                    context: grpc.aio.ServicerContext) -> wpb.ListWebhookDeliveriesResponse:
        async with _mapped(context):
            page, token = await self.admin.list_deliveries(request.account_id, request.limit, request.page_token)
        return wpb.ListWebhookDeliveriesResponse(deliveries=[delivery_message(d) for d in page],
                                                 next_page_token=token)


class _mapped:
    """A :class:`BillingError` → its gRPC status and ``tollgate-reason`` (as grpc_server's ``_mapped``)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context = context

    async def __aenter__(self) -> None:
        attach_traceparent(self.context)

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, BillingError):
            await abort(self.context, exc.status, str(exc), reason=exc.reason, retry_after=exc.retry_after)
        return False
