"""Benchmarks: `python -m bench run` (or `nox -s bench`) runs the suite against a broker
started from the installed package, each client role in a process of its own, and
prints medians and ranges over the runs; `--peer nats` runs the same workloads against
nats-server with nats-py for comparison. Results go to bench/results/ as JSON.

Modules: __main__ (command line), runner (workloads and their orchestration), report
(table, targets, JSON), processes (starting and stopping brokers and roles), procstat
(CPU and memory from /proc), common (what the roles share), workloads_ours and
workloads_nats (the client roles for each peer)."""
