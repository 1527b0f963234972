"""Reviewed lists of mirrored ("nearly symmetric") class pairs: two classes whose videos look like each other played
backwards, so that a probe blind to frame order cannot tell them apart.

Each pair was reviewed one by one against this test: *take a typical video of the first class and play it
backwards; does it look like a typical video of the second class (and vice versa)?* Pairs that pass only for part of
a class carry a ``note`` saying why they are doubtful; candidates that failed are kept in ``*_REJECTED`` with the
reason, so the review can be checked and revised. ``docs/datasets.md`` shows the same tables (a test keeps them equal).

A class appears in at most one pair (the pairs-file format requires it), so where a class had two candidate
partners the exact time reversal was kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MirroredPair:
    first: str
    second: str
    note: str = ""  # empty: the reversal holds for (nearly) every video of both classes

    @property
    def names(self) -> tuple[str, str]:
        return self.first, self.second


# Something-Something v2: exact label strings of labels.json (see ssv2_labels.py).
SSV2_PAIRS: tuple[MirroredPair, ...] = (
    MirroredPair("Opening something", "Closing something"),
    MirroredPair("Folding something", "Unfolding something"),
    MirroredPair("Covering something with something", "Uncovering something"),
    MirroredPair("Burying something in something", "Digging something out of something"),
    MirroredPair("Putting something into something", "Taking something out of something"),
    MirroredPair("Putting something on a surface", "Picking something up"),
    MirroredPair(
        "Putting something similar to other things that are already on the table",
        "Taking one of many similar things on the table",
    ),
    MirroredPair("Moving something up", "Moving something down"),
    MirroredPair("Moving something closer to something", "Moving something away from something"),
    MirroredPair(
        "Moving something and something closer to each other", "Moving something and something away from each other"
    ),
    MirroredPair("Moving something towards the camera", "Moving something away from the camera"),
    MirroredPair("Approaching something with your camera", "Moving away from something with your camera"),
    MirroredPair("Turning the camera left while filming something", "Turning the camera right while filming something"),
    MirroredPair(
        "Turning the camera upwards while filming something", "Turning the camera downwards while filming something"
    ),
    # Pushing played backwards is pulling the other way: the hand that trailed the object now leads it.
    # "Pushing left to right" vs "Pushing right to left" is a left-right *mirror image* (hand on the other side),
    # which an order-blind probe can still tell apart, so it is not the time reversal.
    MirroredPair(
        "Pushing something from left to right",
        "Pulling something from right to left",
        note="a push played backwards is a pull the other way; push L-R vs push R-L is only a spatial mirror",
    ),
    MirroredPair(
        "Pushing something from right to left",
        "Pulling something from left to right",
        note="a push played backwards is a pull the other way; push L-R vs push R-L is only a spatial mirror",
    ),
    MirroredPair(
        "Stuffing something into something",
        "Pulling something out of something",
        note="doubtful: 'pulling out' also covers objects that were never stuffed (loose items in a container)",
    ),
    MirroredPair(
        "Putting something behind something",
        "Pulling something from behind of something",
        note="doubtful: holds when the hand carries the object in both; a pull that drags it on the table differs",
    ),
    MirroredPair(
        "Pushing something off of something",
        "Pulling something onto something",
        note="doubtful: holds when the object slides off; an object that drops off the edge cannot be reversed",
    ),
    MirroredPair(
        "Putting something in front of something",
        "Removing something, revealing something behind",
        note="doubtful: holds only when the object put in front hides the one behind",
    ),
)

# (first, second, why it is not a mirrored pair)
SSV2_REJECTED: tuple[tuple[str, str, str], ...] = (
    (
        "Pushing something from left to right",
        "Pushing something from right to left",
        "spatial mirror, not time reversal (see the push/pull pairs)",
    ),
    (
        "Pulling something from left to right",
        "Pulling something from right to left",
        "spatial mirror, not time reversal (see the push/pull pairs)",
    ),
    (
        "Plugging something into something",
        "Pulling something out of something",
        "SSv2 has no 'Unplugging' class; most 'pulling out' videos reversed do not look like plugging",
    ),
    (
        "Pretending to open something without actually opening it",
        "Pretending to close something without actually closing it",
        "nothing changes state: each pretend-clip reversed looks like another of its own class",
    ),
    (
        "Pretending to put something into something",
        "Pretending to take something out of something",
        "the object never changes place: reversed clips stay in their own class",
    ),
    (
        "Pouring something into something",
        "Pouring something out of something",
        "the same physical event named from either container; neither is the reverse of the other",
    ),
    (
        "Putting something onto something",
        "Taking something from somewhere",
        "'Taking from somewhere' is too broad (shelves, drawers, hands); reversal holds for few of its videos",
    ),
    (
        "Spreading something onto something",
        "Wiping something off of something",
        "spreading reversed (substance gathered up) rarely looks like wiping something off",
    ),
    (
        "Tipping something over",
        "Putting something upright on the table",
        "reversed tipping rises from lying to standing without being lifted; putting upright lifts and places",
    ),
    (
        "Spinning something so it continues spinning",
        "Spinning something that quickly stops spinning",
        "differ in duration of the spin, not in direction of time",
    ),
)

# HMDB51 (class names as in testTrainMulti_7030_splits); its paper names these categories "sit down" and "stand up".
HMDB51_PAIRS: tuple[MirroredPair, ...] = (
    MirroredPair("sit", "stand", note="doubtful: movie clips, cut loosely around the sit-down / stand-up motion"),
)

# UCF101 and Diving48: no class is the time reversal of another (reviewed over the full class lists).
UCF101_PAIRS: tuple[MirroredPair, ...] = ()
DIVING48_PAIRS: tuple[MirroredPair, ...] = ()

# Drive&Act mid-level activities (exact names of the activities_3s/midlevel CSV files).
DRIVE_ACT_PAIRS: tuple[MirroredPair, ...] = (
    MirroredPair("opening_door_outside", "closing_door_outside"),
    MirroredPair("opening_door_inside", "closing_door_inside"),
    MirroredPair("fastening_seat_belt", "unfastening_seat_belt"),
    MirroredPair("putting_on_jacket", "taking_off_jacket"),
    MirroredPair("putting_on_sunglasses", "taking_off_sunglasses"),
    MirroredPair("opening_laptop", "closing_laptop"),
    MirroredPair("opening_bottle", "closing_bottle"),
    MirroredPair("putting_laptop_into_backpack", "taking_laptop_from_backpack"),
    MirroredPair("entering_car", "exiting_car"),
    MirroredPair(
        "placing_an_object",
        "fetching_an_object",
        note="doubtful: both cover many objects and places; reversal holds when the same kind of object is moved",
    ),
    MirroredPair(
        "opening_backpack",
        "closing_backpack",
        note="closing_backpack is outside the 34-class benchmark; the pair is written only when both occur",
    ),
)

# IKEA-ASM atomic actions (exact names of atomic_action_list.txt / gt_segments.json).
IKEA_ASM_PAIRS: tuple[MirroredPair, ...] = tuple(
    MirroredPair(f"pick up {part}", f"lay down {part}")
    for part in ("back panel", "bottom panel", "front panel", "leg", "shelf", "side panel", "table top")
)

PAIRS_BY_DATASET: dict[str, tuple[MirroredPair, ...]] = {
    "ssv2": SSV2_PAIRS,
    "hmdb51": HMDB51_PAIRS,
    "ucf101": UCF101_PAIRS,
    "diving48": DIVING48_PAIRS,
    "drive-act": DRIVE_ACT_PAIRS,
    "ikea-asm": IKEA_ASM_PAIRS,
}


def pairs_present(pairs: Iterable[MirroredPair], classes: Sequence[str] | set[str]) -> list[tuple[str, str]]:
    """The pairs whose two classes both occur in ``classes`` (a pairs file may only name existing classes)."""
    present = set(classes)
    return [pair.names for pair in pairs if pair.first in present and pair.second in present]
