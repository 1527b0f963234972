"""One progress bar per training run: every batch of every epoch on one bar, so its ETA is the run's.

A bar per epoch (what the epoch loop draws on its own) restarts its ETA each epoch and, on a small set of many short
epochs, turns a run into hundreds of bars and log lines. The run bar counts the batches of all epochs; its rate is
the average since the run (or its resume) started, so validation and checkpoint time between epochs are part of
the ETA. The postfix shows the epoch and the latest loss / accuracy. Per-epoch figures go to ``metrics.jsonl``
and, with ``--verbose``, to the log (``trainer``, ``stacking.stacked_run``), not to the bar.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def batches_per_epoch(train_clips: int, batch_size: int) -> int:
    """What ``views.epoch_plan`` cuts an epoch into (one drawn view per clean clip, the last batch partial)."""
    return -(-train_clips // batch_size)


class RunProgress:
    """The bar of one run (``train_probe`` or one stack of ``--seeds``): ``epochs`` epochs of ``batches`` batches,
    ``done`` epochs of which were completed before (a resumed run). ``enabled=False`` draws nothing."""

    def __init__(self, description: str, epochs: int, batches: int, done: int = 0, enabled: bool = True) -> None:
        self.epochs = epochs
        self.bar = tqdm(
            total=epochs * batches,
            initial=done * batches,
            desc=description,
            unit="batch",
            smoothing=0,  # the average over the whole run: epochs also pay for validation and checkpoints
            disable=not enabled,
            dynamic_ncols=True,
        )
        self.epoch = done

    def start_epoch(self, epoch: int) -> None:
        """``epoch`` is 0-based, as the training loops count."""
        self.epoch = epoch
        # set_postfix_str: no read-back of figures here (tests count set_postfix calls, each a device sync)
        self.bar.set_postfix_str(f"epoch={epoch + 1}/{self.epochs}", refresh=False)

    # The epoch loop's interface (a tqdm's update / set_postfix / close), so it draws on this bar.
    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, figures: dict[str, Any]) -> None:
        self.bar.set_postfix({"epoch": f"{self.epoch + 1}/{self.epochs}", **figures})

    def close(self) -> None:
        self.bar.close()
