"""Generated data for tests, benchmarks and the demo: small videos written with PyAV (``videos``) and token caches
written straight into shards (``tokens``)."""
