"""The in-process backend: TransformerLens, SAELens and circuit-tracer on this machine's device.

`LocalBackend` (the facade) is imported lazily, so that importing an engine module of this
package (`backend.local.steering`) does not import the facade, which imports every engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend.local.backend import LocalBackend

__all__ = ["LocalBackend"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from backend.local.backend import LocalBackend

        return LocalBackend
    raise AttributeError(f"module 'backend.local' has no attribute {name!r}")
