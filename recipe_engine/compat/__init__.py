"""Workarounds for upstream libraries that are broken on CPU-only machines, one module per library.

Each module says which upstream file/function it works around and why, installs itself
idempotently, and leaves GPU behaviour unchanged. Nothing else in the engine patches a library.
"""
