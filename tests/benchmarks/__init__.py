"""Tests of the benchmark scripts (smoke runs only)."""
