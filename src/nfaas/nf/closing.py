"""A base for objects that hold an OS resource released by `close()` (capture files, ports).

Subclasses implement `close()`; `with obj:` then closes the object when the block ends,
whether it ends normally or by an exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["Closing"]


class Closing(ABC):
    """Closed by `close()`, or by leaving a `with` block that entered it."""

    @abstractmethod
    def close(self) -> None:
        """Release the resource."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
