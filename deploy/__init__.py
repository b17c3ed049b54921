"""Thin wrappers that run backend/service.py on Modal and RunPod (the Dockerfile covers the rest)."""
