"""Thin wrappers that run backend/http/service.py on Modal and RunPod (the Dockerfile covers the rest)."""
