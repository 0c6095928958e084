"""Benchmarks that print each figure beside its anchor, measured in the same run.

Run one with ``./scripts/bench NAME`` or ``python -m bench.NAME [--quick] [--json FILE]``;
each module also offers ``run(quick: bool) -> dict`` for scripts.
"""
