"""One script per way of building the benchmark lab; each prints `build_ms teardown_ms [extra]`."""
