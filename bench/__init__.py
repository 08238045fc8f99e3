"""Benchmark harness: fan-out throughput, latency, memory and CPU against peer servers."""
