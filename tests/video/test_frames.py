"""Frame sampling (Qwen's rule, by hand) and decoding a video file written by the test (PyAV)."""

import numpy as np
import pytest

from trl_attention.video import VideoArguments, load_video, sample_frame_indices, write_video
from trl_attention.video.frames import frame_count


def test_fixed_frame_count_rounds_to_pairs():
    # Python's round, like Qwen's round_by_factor: 5/2 -> 2 pairs, 7/2 -> 4 pairs.
    assert sample_frame_indices(10, 30.0, VideoArguments(video_nframes=5)) == [0, 3, 6, 9]
    assert sample_frame_indices(10, 30.0, VideoArguments(video_nframes=7)) == [0, 1, 3, 4, 5, 6, 8, 9]
    assert sample_frame_indices(16, 30.0, VideoArguments(video_nframes=16)) == list(range(16))


def test_fps_rule_by_hand():
    # 60 frames at 30 fps = 2 s; 2 fps -> 4 frames wanted, min_frames 4 -> 4 frames: linspace(0, 59, 4).
    args = VideoArguments(video_fps=2.0, video_min_frames=4)
    assert sample_frame_indices(60, 30.0, args) == [0, 20, 39, 59]
    # 300 frames at 30 fps = 10 s -> 20 frames, capped by max_frames 8.
    assert len(sample_frame_indices(300, 30.0, VideoArguments(video_max_frames=8))) == 8
    # a 3-frame clip: at most 2 frames (a multiple of the temporal patch, never more than the clip).
    assert sample_frame_indices(3, 1.0, VideoArguments(video_min_frames=2)) == [0, 2]


def test_too_short_videos_are_errors():
    with pytest.raises(ValueError, match="the video has 8 frames; sampling needs 16"):
        sample_frame_indices(8, 2.0, VideoArguments(video_nframes=16))
    with pytest.raises(ValueError, match="the video has 1 frames"):
        sample_frame_indices(1, 2.0, VideoArguments())
    with pytest.raises(ValueError, match="video_fps must be > 0"):
        VideoArguments(video_fps=0)


def test_frame_lists_keep_their_rate():
    frames = [np.full((28, 28, 3), i, dtype=np.uint8) for i in range(8)]
    out, fps = load_video(frames, VideoArguments(video_nframes=4), fps=4.0)
    assert out.shape == (4, 28, 28, 3) and [int(f[0, 0, 0]) for f in out] == [0, 2, 5, 7]
    assert fps == pytest.approx(4 / 8 * 4.0)
    with pytest.raises(ValueError, match="share one size"):
        load_video([frames[0], np.zeros((14, 28, 3), np.uint8)], VideoArguments(video_nframes=2))


def test_decode_a_file_written_here(tmp_path):
    levels = [20, 60, 100, 140, 180, 220]
    frames = [np.full((64, 48, 3), v, dtype=np.uint8) for v in levels]
    path = write_video(tmp_path / "clip.mp4", frames, fps=3.0)
    assert frame_count(path) == 6
    out, fps = load_video(path, VideoArguments(video_nframes=6))
    assert out.shape == (6, 64, 48, 3) and fps == pytest.approx(3.0)
    np.testing.assert_allclose([f.mean() for f in out], levels, atol=4)  # MPEG-4 is lossy, flat frames nearly exact
    two, fps = load_video(path, VideoArguments(video_nframes=2))  # only frames 0 and 5 are kept
    np.testing.assert_allclose([f.mean() for f in two], [levels[0], levels[5]], atol=4)
    assert fps == pytest.approx(2 / 6 * 3.0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_video(tmp_path / "missing.mp4", VideoArguments())


def test_prepare_dataset_gives_video_rows_video_parts():
    from datasets import Dataset

    from trl_attention.cli.recipes import prepare_dataset

    rows = Dataset.from_list(
        [
            {"question": "Which way?", "answer": "left", "image": None, "video": "a.mp4"},
            {"question": "What colour?", "answer": "red", "image": "b.png", "video": None},
        ]
    )
    out = prepare_dataset(rows, "answer")
    kinds = [[p["type"] for p in r[0]["content"]] for r in out["prompt"]]
    assert kinds == [["video", "text"], ["image", "text"]] and out["solution"] == ["left", "red"]
    with pytest.raises(ValueError, match="no image or video column"):
        prepare_dataset(Dataset.from_list([{"question": "q", "answer": "a"}]))


def test_battery_cases_are_errors_or_correct():
    """Float clips are scaled once per clip; a row's video_fps of 0 and a config's NaN are errors naming them."""
    from trl_attention.video.frames import load_video, row_fps

    args = VideoArguments(video_nframes=2, video_min_frames=2)
    dark, bright = np.full((28, 28, 3), 0.5), np.full((28, 28, 3), 200.0)  # a 0..255 float clip, one frame near black
    frames, _ = load_video([dark, bright], args)
    assert frames[0].max() == 0 or frames[0].max() == 1  # 0.5 of 255, not 0.5 * 255 (it came out white)
    assert frames[1].max() == 200
    unit, _ = load_video([np.full((28, 28, 3), 0.5), np.full((28, 28, 3), 1.0)], args)  # a 0..1 clip
    assert unit[0].max() == 128 and unit[1].max() == 255
    with pytest.raises(ValueError, match=r"frame values must lie in \[0, 1\] or \[0, 255\], got \[0, 300\]"):
        load_video([np.zeros((28, 28, 3)), np.full((28, 28, 3), 300.0)], args)
    with pytest.raises(ValueError, match="the row's video_fps must be a finite number > 0, got 0"):
        row_fps(0, 2.0)  # was: silently the default
    assert row_fps(None, 2.0) == 2.0 and row_fps(4, 2.0) == 4.0
    with pytest.raises(ValueError, match="video_fps must be > 0 and finite, got nan"):
        VideoArguments(video_fps=float("nan"))  # was accepted, then reported as a row error
