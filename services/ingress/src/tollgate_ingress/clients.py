"""The three long-lived gRPC channels ingress talks through: billing, policy, router.

Created once per process and shared by every request (a channel multiplexes calls over one HTTP/2 connection;
opening one per request would cost a TCP and HTTP/2 handshake each time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from tollgate.billing.v1 import billing_service_pb2_grpc
from tollgate.policy.v1 import policy_service_pb2_grpc
from tollgate.router.v1 import router_service_pb2_grpc
from tollgate_common.grpc import open_channel
from tollgate_common.internal_auth import InternalAuth

from .config import Settings

__all__ = ["Upstreams"]


@dataclass(frozen=True, slots=True)
class Upstreams:
    billing: billing_service_pb2_grpc.BillingServiceStub
    policy: policy_service_pb2_grpc.PolicyServiceStub
    router: router_service_pb2_grpc.RouterServiceStub
    channels: tuple[grpc.aio.Channel, ...]
    #: Indexes of channels that have been READY at least once.
    connected_once: set[int] = field(default_factory=set)

    @classmethod
    def connect(cls, settings: Settings) -> Upstreams:
        """Open the channels (lazily connecting; a down service does not stop ingress from starting).

        Every call on them carries ingress's caller token (tollgate_common.internal_auth)."""
        auth = InternalAuth("ingress", settings.internal_keys)
        billing = open_channel(settings.billing_addr, auth)
        policy = open_channel(settings.policy_addr, auth)
        router = open_channel(settings.router_addr, auth)
        return cls(
            billing=billing_service_pb2_grpc.BillingServiceStub(billing),
            policy=policy_service_pb2_grpc.PolicyServiceStub(policy),
            router=router_service_pb2_grpc.RouterServiceStub(router),
            channels=(billing, policy, router),
        )

    def ready(self) -> bool:
        """True when every channel is connected; asking also starts connecting an idle channel.

        A channel that was connected and went IDLE (gRPC closes unused connections after a while) still counts:
        it reconnects on the next call, and readiness should not flap because traffic paused."""
        ok = True
        for i, channel in enumerate(self.channels):
            state = channel.get_state(try_to_connect=True)
            if state == grpc.ChannelConnectivity.READY:
                self.connected_once.add(i)
            elif not (state == grpc.ChannelConnectivity.IDLE and i in self.connected_once):
                ok = False
        return ok

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
