"""The broker's long-lived parts, built from settings and started and stopped together."""

from __future__ import annotations

from broker.audit import AuditWriter, CheckpointSigner
from broker.callers import ClientKeyAuthenticator
from broker.config import Secret, Settings
from broker.issuance import Issuer
from broker.upstream import UpstreamClient


class Runtime:
    def __init__(
        self, settings: Settings, api_key: Secret, signer: CheckpointSigner | None = None
    ) -> None:
        self.settings = settings
        self.authenticator = ClientKeyAuthenticator(
            settings.clients, settings.tokens.default_expires_in
        )
        self.upstream = UpstreamClient(settings.upstream, api_key)
        self.issuer = Issuer(self.upstream)
        self.audit = AuditWriter(settings.audit, signer)

    async def start(self) -> None:
        await self.upstream.start()
        await self.audit.start()

    async def close(self) -> None:
        await self.audit.close()
        await self.upstream.close()
