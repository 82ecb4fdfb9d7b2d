"""Bearer tokens: scoped to one namespace (the admin token to all), stored only as sha256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from nfaas.control.registry import Registry

ALL_NAMESPACES = "*"
PREFIX = "nfaas"


@dataclass(frozen=True)
class Principal:
    token_id: str
    namespace: str

    @property
    def is_admin(self) -> bool:
        return self.namespace == ALL_NAMESPACES

    def may_access(self, namespace: str) -> bool:
        return self.is_admin or self.namespace == namespace


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Tokens look like ``nfaas_<id>_<secret>``; the id is public and names the token."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._by_hash: dict[str, Principal] = {}
        for record in registry.tokens():
            if record.revoked is None:
                self._by_hash[record.hash] = Principal(record.id, record.namespace)

    def create(self, namespace: str) -> tuple[str, str]:
        """Returns (token id, token). The token itself is never stored."""
        token_id = secrets.token_hex(6)
        token = f"{PREFIX}_{token_id}_{secrets.token_urlsafe(24)}"
        digest = hash_token(token)
        self._registry.add_token(token_id, namespace, digest)
        self._by_hash[digest] = Principal(token_id, namespace)
        return token_id, token

    def verify(self, token: str) -> Principal | None:
        return self._by_hash.get(hash_token(token))

    def revoke(self, token_id: str) -> bool:
        if not self._registry.revoke_token(token_id):
            return False
        self._by_hash = {h: p for h, p in self._by_hash.items() if p.token_id != token_id}
        return True

    def list(self) -> list[dict[str, object]]:
        return [
            {"id": r.id, "namespace": r.namespace, "created": r.created, "revoked": r.revoked}
            for r in self._registry.tokens()
        ]
