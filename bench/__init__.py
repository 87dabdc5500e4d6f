"""Benchmarks. `python -m bench.quick` measures pub/sub throughput and request latency
with Python clients in separate processes against a broker in its own process."""
