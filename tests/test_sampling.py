import numpy as np
import pytest

from step_cache.extraction.sampling import repeats_frames, segment_indices


def test_single_clip_takes_segment_centres():
    # 100 frames, 4 segments of 25: centres at 12.5, 37.5, 62.5, 87.5
    assert segment_indices(100, 4).tolist() == [[12, 37, 62, 87]]


def test_indices_cover_video_uniformly_and_increase():
    indices = segment_indices(300, 16)[0]
    assert indices[0] < 300 / 16 and indices[-1] > 300 - 300 / 16
    assert np.all(np.diff(indices) > 0)
    np.testing.assert_allclose(np.diff(indices), 300 / 16, atol=1)


def test_multiple_clips_interleave_inside_segments():
    indices = segment_indices(80, 4, clips=2)  # segments of 20; clip 0 at 1/4, clip 1 at 3/4 of each
    assert indices.tolist() == [[5, 25, 45, 65], [15, 35, 55, 75]]


def test_segment_offset_is_added():
    assert segment_indices(40, 4, start=100).tolist() == [[105, 115, 125, 135]]


def test_short_video_repeats_frames_in_order():
    indices = segment_indices(3, 8)[0]
    assert indices.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert repeats_frames(segment_indices(3, 8)) and not repeats_frames(segment_indices(8, 8))


@pytest.mark.parametrize("num_frames,frames,clips", [(0, 4, 1), (10, 0, 1), (10, 4, 0)])
def test_invalid_arguments(num_frames, frames, clips):
    with pytest.raises(ValueError):
        segment_indices(num_frames, frames, clips)
