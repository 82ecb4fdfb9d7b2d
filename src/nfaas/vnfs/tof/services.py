"""The TOF's service registry: which addresses UEs reach at the edge, and where the apps are.

A service (seed 002 §4.3.4) is a `name`, the `serviceIP` UEs send to, and the
`applicationIP` where the edge application actually listens. The registry is what the REST
API changes and what the data path reads. The two may run in different threads: every
change happens under a lock and bumps `version`; the data path asks for `table()` once per
batch and gets an immutable, vectorised lookup built for that version, so a change takes
effect at the next batch and a batch never sees half a change.

Uniqueness: names, service IPs and application IPs are each unique across services. The
seed says only "409 Conflict"; application IPs must be unique too because replies from an
application are mapped back to their service by the application's address.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MAX_NAME_LENGTH",
    "Service",
    "ServiceConflict",
    "ServiceNotFound",
    "ServiceRegistry",
    "ServiceTable",
    "ServiceValueError",
    "parse_address",
]

MAX_NAME_LENGTH = 64
# A name must be usable as one path segment of /service/{name}: no "/", no controls.
_NAME_BAD = re.compile(r"[/\x00-\x1f\x7f]")


class ServiceValueError(ValueError):
    """A service field holds a bad value; `field` is its JSON name."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class ServiceConflict(Exception):
    """A create or update would give two services the same name or address."""


class ServiceNotFound(KeyError):
    """No service has that name (or service IP)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


def parse_address(field: str, text: str) -> str:
    """The canonical dotted-quad form of a unicast IPv4 address, or ServiceValueError."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ServiceValueError(field, f"{text!r} is not an IPv4 address") from None
    if addr.version != 4:
        raise ServiceValueError(
            field, f"{text!r} is an IPv6 address; the TOF offloads IPv4 traffic only"
        )
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or int(addr) == 0xFFFFFFFF:
        raise ServiceValueError(field, f"{text!r} is not a unicast address")
    return str(addr)


def check_name(field: str, name: str) -> str:
    if not name:
        raise ServiceValueError(field, "must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ServiceValueError(field, f"longer than {MAX_NAME_LENGTH} characters")
    bad = _NAME_BAD.search(name)
    if bad:
        raise ServiceValueError(
            field, f"must not contain {bad.group()!r} (at character {bad.start()})"
        )
    return name


@dataclass(frozen=True)
class Service:
    """One offloaded service; addresses in canonical dotted-quad form."""

    name: str
    service_ip: str
    application_ip: str

    @classmethod
    def of(cls, name: str, service_ip: str, application_ip: str) -> Service:
        """A validated service (ServiceValueError names the bad field, by its JSON name)."""
        return cls(
            check_name("name", name),
            parse_address("serviceIP", service_ip),
            parse_address("applicationIP", application_ip),
        )

    def to_json(self) -> dict[str, str]:
        """The seed's `service` object."""
        return {
            "name": self.name,
            "serviceIP": self.service_ip,
            "applicationIP": self.application_ip,
        }


class ServiceTable:
    """An immutable, vectorised view of the services of one registry version."""

    def __init__(self, services: tuple[Service, ...], version: int) -> None:
        self.services = services
        self.version = version
        svc = np.array([int(ipaddress.IPv4Address(s.service_ip)) for s in services], np.uint32)
        app = np.array([int(ipaddress.IPv4Address(s.application_ip)) for s in services], np.uint32)
        by_svc = np.argsort(svc)
        self._svc_sorted, self._app_of_svc = svc[by_svc], app[by_svc]
        by_app = np.argsort(app)
        self._app_sorted, self._svc_of_app = app[by_app], svc[by_app]

    def __len__(self) -> int:
        return len(self.services)

    @staticmethod
    def _lookup(
        keys: NDArray[np.uint32], sorted_keys: NDArray[np.uint32], values: NDArray[np.uint32]
    ) -> tuple[NDArray[np.bool_], NDArray[np.uint32]]:
        if sorted_keys.size == 0:
            return np.zeros(keys.shape[0], np.bool_), np.zeros(keys.shape[0], np.uint32)
        at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
        hit = sorted_keys[at] == keys
        return hit, np.where(hit, values[at], 0).astype(np.uint32)

    def application_of(
        self, service_ip: NDArray[np.uint32]
    ) -> tuple[NDArray[np.bool_], NDArray[np.uint32]]:
        """Per address: is it a service IP, and the application IP behind it."""
        return self._lookup(service_ip, self._svc_sorted, self._app_of_svc)

    def service_of(
        self, application_ip: NDArray[np.uint32]
    ) -> tuple[NDArray[np.bool_], NDArray[np.uint32]]:
        """Per address: is it an application IP, and the service IP it answers for."""
        return self._lookup(application_ip, self._app_sorted, self._svc_of_app)


class ServiceRegistry:
    """name -> Service, in creation order; thread-safe; versioned for the data path."""

    def __init__(self, services: tuple[Service, ...] | list[Service] = ()) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, Service] = {}
        self._version = 0
        self._table: ServiceTable | None = None
        for s in services:
            self.create(s)

    def __len__(self) -> int:
        return len(self._services)

    def __iter__(self) -> Iterator[Service]:
        return iter(self.list())

    @property
    def version(self) -> int:
        return self._version

    def list(self) -> list[Service]:
        with self._lock:
            return list(self._services.values())

    def get(self, name: str) -> Service:
        with self._lock:
            try:
                return self._services[name]
            except KeyError:
                raise ServiceNotFound(f"no service named {name!r}") from None

    def _conflicts(self, new: Service, replacing: str | None) -> None:
        for old in self._services.values():
            if old.name == replacing:
                continue
            if old.name == new.name:
                raise ServiceConflict(f"a service named {new.name!r} already exists")
            if old.service_ip == new.service_ip:
                raise ServiceConflict(
                    f"serviceIP {new.service_ip} is already used by service {old.name!r}"
                )
            if old.application_ip == new.application_ip:
                raise ServiceConflict(
                    f"applicationIP {new.application_ip} is already used by service "
                    f"{old.name!r} (replies are mapped back to their service by it)"
                )

    def _changed(self) -> None:
        self._version += 1
        self._table = None

    def create(self, service: Service) -> Service:
        """Add a service; ServiceConflict if its name or an address is taken."""
        with self._lock:
            self._conflicts(service, None)
            self._services[service.name] = service
            self._changed()
            return service

    def update(self, name: str, service: Service) -> Service:
        """Replace service `name` (same name); ServiceNotFound, ServiceConflict."""
        with self._lock:
            if name not in self._services:
                raise ServiceNotFound(f"no service named {name!r}")
            if service.name != name:
                raise ServiceValueError("name", f"{service.name!r} differs from {name!r}")
            self._conflicts(service, name)
            self._services[name] = service
            self._changed()
            return service

    def delete(self, name_or_ip: str) -> Service:
        """Remove the service with that name or, failing that, that service IP."""
        with self._lock:
            found = self._services.get(name_or_ip)
            if found is None:
                found = next(
                    (s for s in self._services.values() if s.service_ip == name_or_ip), None
                )
            if found is None:
                raise ServiceNotFound(f"no service with name or serviceIP {name_or_ip!r}")
            del self._services[found.name]
            self._changed()
            return found

    def table(self) -> ServiceTable:
        """The lookup for the current version (built once per version)."""
        with self._lock:
            if self._table is None:
                self._table = ServiceTable(tuple(self._services.values()), self._version)
            return self._table
