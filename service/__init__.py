"""Caviar's study service: FastAPI app, store and Ray dispatch (see the service issue)."""
