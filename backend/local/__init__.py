"""The in-process backend: TransformerLens, SAELens and circuit-tracer on this machine's device."""

from backend.local.backend import LocalBackend

__all__ = ["LocalBackend"]
