"""Stage two: training probes on cached tokens. Splits and token data (in memory or streamed), the optimizer and
schedule, the training loop (``trainer.train_probe``), run directories, metrics (incl. frame-order and
mirrored-pair metrics), evaluation and prediction with a trained probe.
"""
