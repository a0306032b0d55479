"""Helper modules of ``benchmarks/accuracy.py`` (kept out of ``benchmarks/*.py``, which ``make bench`` runs)."""
