"""Persistent state in SQLite (WAL): deployed functions and API tokens."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from nfaas.core.spec import FunctionSpec, spec_from_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    bundle TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    revoked REAL
);
"""


@dataclass(frozen=True)
class FunctionRecord:
    namespace: str
    spec: FunctionSpec
    bundle: str
    created: float
    updated: float


@dataclass(frozen=True)
class TokenRecord:
    id: str
    namespace: str
    hash: str
    created: float
    revoked: float | None


class Registry:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        path.chmod(0o600)

    def close(self) -> None:
        self._db.close()

    def put_function(self, namespace: str, spec: FunctionSpec, bundle: str) -> FunctionRecord:
        now = time.time()
        self._db.execute(
            "INSERT INTO functions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(namespace, name) DO UPDATE "
            "SET spec = excluded.spec, bundle = excluded.bundle, updated = excluded.updated",
            (namespace, spec.name, msgspec.json.encode(spec).decode(), bundle, now, now),
        )
        record = self.get_function(namespace, spec.name)
        assert record is not None
        return record

    def get_function(self, namespace: str, name: str) -> FunctionRecord | None:
        row = self._db.execute(
            "SELECT namespace, spec, bundle, created, updated FROM functions "
            "WHERE namespace = ? AND name = ?",
            (namespace, name),
        ).fetchone()
        return _function(row) if row else None

    def list_functions(self, namespace: str | None = None) -> list[FunctionRecord]:
        if namespace is None:
            rows = self._db.execute(
                "SELECT namespace, spec, bundle, created, updated FROM functions ORDER BY namespace, name"
            )
        else:
            rows = self._db.execute(
                "SELECT namespace, spec, bundle, created, updated FROM functions "
                "WHERE namespace = ? ORDER BY name",
                (namespace,),
            )
        return [_function(row) for row in rows]

    def delete_function(self, namespace: str, name: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM functions WHERE namespace = ? AND name = ?", (namespace, name)
        )
        return cursor.rowcount > 0

    def bundles_in_use(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT DISTINCT bundle FROM functions")}

    def add_token(self, token_id: str, namespace: str, token_hash: str) -> TokenRecord:
        now = time.time()
        self._db.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, NULL)", (token_id, namespace, token_hash, now)
        )
        return TokenRecord(token_id, namespace, token_hash, now, None)

    def tokens(self) -> list[TokenRecord]:
        rows = self._db.execute(
            "SELECT id, namespace, hash, created, revoked FROM tokens ORDER BY created"
        )
        return [TokenRecord(*row) for row in rows]

    def revoke_token(self, token_id: str) -> bool:
        cursor = self._db.execute(
            "UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL",
            (time.time(), token_id),
        )
        return cursor.rowcount > 0


def _function(row: tuple[str, str, str, float, float]) -> FunctionRecord:
    namespace, spec, bundle, created, updated = row
    return FunctionRecord(namespace, spec_from_json(spec), bundle, created, updated)
