"""Benchmarks that print figures: the watermark (`watermark`), each secure mode's round
(`secure`, with `masked`'s row in `masked` and the shared workload in `workload`). Flower's own
SecAgg+ baseline imports Flower, so it is a script (scripts/bench_secaggplus_flwr.py) that
`secure` runs in a child process.

May import: every library package of `common/`. Never Flower.
"""
