"""Stage one: videos -> frozen-backbone tokens. Decoding and sampling (``video``, ``sampling``), timm-exact
preprocessing, backbones and their weights, parallel decode workers, device batching, the extraction engine
(``engine.extract``) and multi-part / torchrun extraction (``distributed``).

Deliberately empty: decode workers import ``decode_pool`` and must not pull in torch through this package.
"""
