"""``step_cache.Recognizer``: live action recognition, one frame at a time (a webcam, a robot's camera, a video
read frame by frame).

Pushed frames that a window samples are buffered and encoded together, in one backbone call, when the frame that
completes a window arrives (``stream.WindowRunner`` with ``when_due``): a window's answer comes with its last
sampled frame, as it would with one backbone call per frame, but the backbone runs on batches as in ``timeline``
(one-frame calls were 3.8-7.7x slower than ``timeline`` on the same windows; ``bench/recognizer.py``). Tokens are
shared by the overlapping windows that sample the same frame. Windows are those of ``timeline`` (same sampling,
same logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from step_cache.errors import InputError
from step_cache.recognition.model import RunModel
from step_cache.recognition.stream import WindowRunner
from step_cache.recognition.windows import WindowPlan, plan_windows
from step_cache.training.run_notes import warn_if_not_above_chance


@dataclass
class Prediction:
    """A window's answer: its frames ``[start_frame, end_frame)`` (seconds at the given frame rate), its logits
    and softmax probabilities over ``classes``."""

    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    logits: np.ndarray  # (C,) float32
    probabilities: np.ndarray  # (C,)
    classes: list[str]
    above_chance: bool = True  # False: the run's headline top-1 never beat chance, so this answer is no better

    @property
    def label(self) -> str:
        return self.classes[int(self.probabilities.argmax())]

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.classes[c], float(self.probabilities[c])) for c in order]


class Recognizer:
    """Classify windows of a stream of RGB frames with a trained run.

    ``fps`` is the stream's frame rate; ``window`` and ``stride`` are in seconds (defaults: the median duration
    of the run's training videos, and one segment of the window, as in ``timeline``; a run on a ``--frame-step S``
    cache: K (T S + 1) frames every S, ``windows.plan_windows``). A run whose headline top-1
    is not above chance is warned about once, here, and every ``Prediction`` carries ``above_chance=False``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        fps: float = 30.0,
        window: float | None = None,
        stride: float | None = None,
        weights: str | Path | None = None,
        device: str = "auto",
    ):
        self.model = RunModel(run_dir, weights=weights, device=device)
        self.fps = float(fps)
        self.plan: WindowPlan = plan_windows(
            self.fps, self.model.frames, self.model.clips, window, stride, self.model.typical_duration(),
            frame_step=self.model.frame_step,
        )  # fmt: skip
        self.classes = self.model.classes
        self.chance_note = warn_if_not_above_chance(run_dir)  # None when the run beat chance
        self.reset()

    def reset(self) -> None:
        """Start a new stream: frame numbers restart at 0 and no window is pending."""
        # at most one window's frames per call (and a cap, for a window longer than that)
        self.runner = WindowRunner(self.model, self.plan.stream(), batch_frames=64, when_due=True)
        self.frames_seen = 0

    def push(self, frame: np.ndarray) -> Prediction | None:
        """Feed the next frame, (H, W, 3) RGB uint8; returns the prediction of the window it completes, if any."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape[:2]:
            empty = " (an empty frame)" if frame.size == 0 else ""
            raise InputError(
                f"Recognizer.push: a frame must be (H, W, 3) RGB uint8 with H, W >= 1, got {frame.shape} "
                f"{frame.dtype}{empty}"
            )
        finished = self.runner.push(self.frames_seen, frame)
        self.frames_seen += 1
        if not finished:
            return None
        result = finished[-1]  # windows complete one per frame (their starts differ)
        probabilities = torch.softmax(torch.from_numpy(result.logits)[None], dim=1)[0].numpy()
        start, end = result.window.start, result.window.end
        return Prediction(
            start, end, start / self.fps, end / self.fps, result.logits, probabilities, self.classes,
            above_chance=self.chance_note is None,
        )  # fmt: skip
