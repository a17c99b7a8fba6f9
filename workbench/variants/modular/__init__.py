"""Modular updates that wrap a module rather than a weight: bottleneck adapters (Pfeiffer / MAD-X)."""
