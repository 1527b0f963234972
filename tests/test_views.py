"""The augmented-view sampler of ``extract --views``: crops, temporal jitter, flips, colour, determinism."""

import math

import numpy as np
import pytest

from step_cache.extraction.decoders import open_video
from step_cache.extraction.engine import ExtractionError, ExtractOptions, view_settings
from step_cache.extraction.preprocess import Preprocessing
from step_cache.extraction.video import decode_clips
from step_cache.extraction.views import (
    ViewError,
    ViewSettings,
    colour_jitter,
    draw_view,
    finish_view,
    gets_views,
    jittered_indices,
    random_resized_crop,
    render_view,
    view_label,
    view_rng,
    view_sampler,
)
from step_cache.synthetic.videos import moving_square, write_video


@pytest.mark.parametrize("height,width", [(48, 64), (240, 320), (100, 30)])
def test_crops_lie_in_the_frame_and_respect_scale_and_ratio(height, width):
    scale, ratio = (0.3, 1.0), (0.75, 1.35)
    for seed in range(300):
        top, left, h, w = random_resized_crop(view_rng(seed, "v", 1), height, width, scale, ratio)
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width and h > 0 and w > 0
        if (height, width) == (100, 30) and w == width:  # the centre-crop fallback of a narrow frame
            continue
        # h and w are rounded from the drawn real sizes: at most half a pixel off each
        lo_area, hi_area = (h - 0.5) * (w - 0.5), (h + 0.5) * (w + 0.5)
        assert lo_area <= scale[1] * height * width and hi_area >= scale[0] * height * width
        assert (w - 0.5) / (h + 0.5) <= ratio[1] and (w + 0.5) / (h - 0.5) >= ratio[0]


def test_crop_falls_back_to_the_centre_after_ten_tries():
    # a 10 x 1000 strip cannot hold 90 % of its area at a ratio <= 1.35: timm's centre crop of the widest ratio
    top, left, h, w = random_resized_crop(view_rng(0, "v", 1), 10, 1000, (0.9, 1.0), (0.75, 1.35))
    assert (top, h, w) == (0, 10, round(10 * 1.35)) and left == (1000 - w) // 2


def test_crop_scale_range_is_used():
    areas = [
        h * w / (240 * 320)
        for s in range(400)
        for _, _, h, w in [random_resized_crop(view_rng(s, "k", 1), 240, 320, (0.3, 1.0), (0.75, 1.35))]
    ]
    assert min(areas) < 0.35 and max(areas) > 0.9  # the whole range is drawn, not a corner of it


def test_jittered_frames_stay_in_their_segments():
    rng = np.random.default_rng(0)
    for num_frames, frames, clips in [(100, 8, 1), (37, 4, 3), (5, 8, 1)]:
        for _ in range(50):
            indices, span = jittered_indices(rng, num_frames, frames, clips, start=10, span=None)
            assert indices.shape == (clips, frames) and span == [10, 10 + num_frames]
            segment = num_frames / frames
            for k in range(clips):
                for t in range(frames):
                    lo = math.floor((t + k / clips) * segment)
                    hi = min(num_frames - 1, math.floor((t + (k + 1) / clips) * segment))
                    assert lo <= indices[k, t] - 10 <= hi


def test_sub_span_is_at_least_the_asked_fraction():
    rng = np.random.default_rng(1)
    lengths = []
    for _ in range(200):
        indices, (first, end) = jittered_indices(rng, 200, 8, 1, start=0, span=0.5)
        assert 0 <= first < end <= 200 and end - first >= 100
        assert first <= indices.min() and indices.max() < end
        lengths.append(end - first)
    assert min(lengths) < 120 and max(lengths) > 180


def test_views_are_deterministic_per_seed_video_and_view():
    settings = ViewSettings(count=2, colour=0.3, flip=True, span=0.6)

    def drawn(seed, key, view):
        rng, params = draw_view(ViewSettings(**{**vars(settings), "seed": seed}), key, view, 90, 8, 2, 5)
        return finish_view(settings, rng, params, 120, 160)

    assert drawn(0, "a.mp4", 1) == drawn(0, "a.mp4", 1)
    assert drawn(0, "a.mp4", 1) != drawn(0, "a.mp4", 2)
    assert drawn(0, "a.mp4", 1) != drawn(0, "b.mp4", 1)
    assert drawn(0, "a.mp4", 1) != drawn(1, "a.mp4", 1)
    params = drawn(0, "a.mp4", 1)
    assert set(params) == {"view", "frame_indices", "span", "crop", "flip", "colour"}
    assert all(0.7 <= f <= 1.3 for f in params["colour"])


def test_flips_are_off_by_default_and_half_the_views_with_view_flip():
    def flips(settings):
        out = []
        for view in range(1, 201):
            rng, params = draw_view(settings, "v", view, 30, 4, 1, 0)
            out.append(finish_view(settings, rng, params, 48, 64)["flip"])
        return out

    assert not any(flips(ViewSettings(count=1)))
    assert 70 < sum(flips(ViewSettings(count=1, flip=True))) < 130
    assert ViewSettings(count=1).to_dict()["flip"] is False


def test_flip_pairs_swap_the_label_of_flipped_views_only():
    settings = ViewSettings(count=1, flip=True, flip_pairs=(("slide_left", "slide_right"),))
    swap = settings.swap_map()
    assert view_label("slide_left", {"flip": True}, swap) == "slide_right"
    assert view_label("slide_right", {"flip": True}, swap) == "slide_left"
    assert view_label("slide_left", {"flip": False}, swap) == "slide_left"
    assert view_label("shake", {"flip": True}, swap) == "shake"  # no mirror: a flip keeps the label
    assert view_label("slide_left", {"flip": True}, {}) == "slide_left"  # --view-flip without pairs


@pytest.mark.parametrize(
    "options,message",
    [
        ({"scale": (0.0, 1.0)}, "view_scale="),
        ({"scale": (0.8, 0.5)}, "view_scale="),
        ({"ratio": (2.0, 1.0)}, "view_ratio="),
        ({"span": 1.5}, "view_span="),
        ({"colour": 1.0}, "view_colour="),
        ({"flip_pairs": (("a", "b"),)}, "needs view_flip=True"),
    ],
)
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ViewError, match=message):
        ViewSettings(count=1, **options)


def test_which_videos_get_views():
    assert gets_views("train") and gets_views("") and gets_views(None)
    assert not gets_views("val") and not gets_views("test")


def _preprocessing(size=16):
    return Preprocessing(crop=size, scale=size, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)


def test_render_crops_resizes_and_flips():
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    params = {"crop": [4, 10, 16, 16], "flip": False, "colour": None}
    out = render_view(frames, params, _preprocessing(16))
    assert out.shape == (3, 3, 16, 16) and out.dtype == np.uint8
    # a crop of exactly the output size is not resampled: the pixels are the frame's
    np.testing.assert_array_equal(out, frames[:, 4:20, 10:26].transpose(0, 3, 1, 2))
    flipped = render_view(frames, {**params, "flip": True}, _preprocessing(16))
    np.testing.assert_array_equal(flipped, out[..., ::-1])
    assert render_view(frames, {**params, "crop": [0, 0, 40, 60]}, _preprocessing(16)).shape == (3, 3, 16, 16)


def test_colour_jitter_arithmetic():
    frames = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(colour_jitter(frames, 1.0, 1.0, 1.0), frames)
    half = colour_jitter(frames, 0.5, 1.0, 1.0)
    assert np.abs(half.astype(int) - np.round(frames * 0.5)).max() <= 1  # float32 rounding of .5 cases
    grey = colour_jitter(frames, 1.0, 1.0, 0.0)  # saturation 0: every channel equals the grey level
    assert np.abs(grey[..., 0].astype(int) - grey[..., 2]).max() <= 1


def test_views_are_decoded_in_the_same_pass_as_the_clean_clips(tmp_path):
    path = write_video(tmp_path / "v.mp4", moving_square(num_frames=30, direction=1, seed=3))
    settings = ViewSettings(count=2)
    decoded = decode_clips(path, 4, 1, views=view_sampler(settings, "v.mp4", 4, 1))
    assert decoded.frames.shape[0] == 4 and len(decoded.views) == 2
    source = open_video(path, "decord")
    try:
        for view, (_, params, frames) in enumerate(decoded.views, 1):
            assert params["view"] == view
            indices = np.asarray(params["frame_indices"]).ravel()
            np.testing.assert_array_equal(frames, source.read(indices.tolist()))
    finally:
        source.close()


def test_view_options_through_extract_options(tmp_path):
    pairs = tmp_path / "flips.txt"
    pairs.write_text("slide_left,slide_right\n")
    options = ExtractOptions(views=2, view_flip=True, flip_pairs=str(pairs), view_scale=[0.5, 0.9], view_seed=4)
    views = view_settings(options, ["shake", "slide_left", "slide_right"])
    assert views.flip_pairs == (("slide_left", "slide_right"),) and views.scale == (0.5, 0.9) and views.seed == 4
    assert views.to_dict()["flip_pairs"] == [["slide_left", "slide_right"]]
    with pytest.raises(ExtractionError, match="not supported with decoder='torchcodec-cuda'"):
        view_settings(ExtractOptions(views=1, decoder="torchcodec-cuda"), [])
    assert view_settings(ExtractOptions(decoder="torchcodec-cuda"), []).count == 0  # no views: nothing refused


def test_a_view_is_reproduced_from_its_recorded_parameters(tmp_path):
    """What docs/shard-format.md promises: the frame numbers, crop, flip and colour factors in view_params give
    back the exact pixels the backbone saw."""
    from step_cache.extraction.decode_pool import DecodeTask, decode_task

    path = write_video(tmp_path / "v.mp4", moving_square(num_frames=40, size=(48, 64), direction=1, seed=5))
    settings = ViewSettings(count=2, colour=0.3, flip=True, span=0.7)
    result = decode_task(DecodeTask(0, str(path), None, None, key="v.mp4", views=settings), 4, 2, _preprocessing())
    assert result.error is None and result.frames.shape == (3 * 2 * 4, 3, 16, 16)
    source = open_video(path, "decord")
    try:
        for view, params in enumerate(result.view_params, 1):
            frames = source.read(np.asarray(params["frame_indices"]).ravel().tolist())
            expected = render_view(frames, params, _preprocessing())
            np.testing.assert_array_equal(result.frames[8 * view : 8 * (view + 1)], expected)
    finally:
        source.close()
