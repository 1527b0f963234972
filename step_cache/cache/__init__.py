"""The token cache on disk, a public and versioned contract (docs/shard-format.md): the manifest, the HDF5 shards
and their reader, the crash-safe writer state, the directory lock, verification and summaries.

Kept free of torch imports: decode workers and quick inspections import from here.
"""
