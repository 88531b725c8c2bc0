"""predict.py on videos, webcams, globs and single images (mpn_jax.inference.video): the annotated
video has the source's frames, rate, times and size; the JSON one entry per frame; a webcam (faked:
no camera here) runs until Ctrl-C or --max_frames; bad inputs are one line, exit status 2."""

import fractions
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mpn_jax import errors
from mpn_jax import files
from mpn_jax import visualize
from mpn_jax.inference import video

from conftest import REPO
# Tiny randomly initialised stages saved as checkpoints, and the model loaded once per session.
from test_evaluate_cli import tiny_stages  # noqa: F401  pylint: disable=unused-import
from test_predict_outputs import load_once  # noqa: F401  pylint: disable=unused-import

av = pytest.importorskip("av")

W, H, FPS, N = 160, 120, 10, 12


def _figure_frame(i, w=W, h=H):
  """A frame with a stick figure walking to the right (drawn synthetic content)."""
  image = Image.new("RGB", (w, h), (40, 60, 90))
  d = ImageDraw.Draw(image)
  x = 30 + 6 * i
  d.ellipse([x - 6, 20, x + 6, 32], fill=(230, 200, 170))
  d.line([x, 32, x, 70], fill=(200, 50, 50), width=4)
  d.line([x - 15, 45, x + 15, 45], fill=(50, 200, 50), width=4)
  d.line([x, 70, x - 10 + i % 3 * 5, 100], fill=(50, 50, 200), width=4)
  d.line([x, 70, x + 10 - i % 3 * 5, 100], fill=(50, 50, 200), width=4)
  return np.asarray(image)


def _make_video(path, n=N, fps=FPS, w=W, h=H):
  """An H.264 MP4 of n frames at fps, written with PyAV."""
  with av.open(str(path), mode="w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(n):
      frame = av.VideoFrame.from_ndarray(_figure_frame(i, w, h), format="rgb24")
      frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)
  return path


def _read_video(path):
  """(frames [n, H, W, 3] uint8, times [n] s, average rate) read back with PyAV."""
  with av.open(str(path)) as c:
    s = c.streams.video[0]
    frames, times = [], []
    for f in c.decode(s):
      frames.append(f.to_ndarray(format="rgb24"))
      times.append(float(f.time))
    return np.stack(frames), np.asarray(times), s.average_rate


@pytest.fixture()
def clip(tmp_path):
  folder = tmp_path / "clips"
  folder.mkdir()
  return _make_video(folder / "walk.mp4")


# --- inputs -------------------------------------------------------------------------------------


def test_source_kinds(tmp_path, clip):
  assert video.source_kind("0") == "camera" and video.source_kind(" 12 ") == "camera"
  assert video.source_kind(str(clip)) == "video"
  upper = tmp_path / "CLIP.MOV"
  upper.write_bytes(b"x")
  assert video.source_kind(str(upper)) == "video"
  assert video.source_kind(str(tmp_path)) == "images"
  assert video.source_kind(str(tmp_path / "*.jpg")) == "images"
  (tmp_path / "3").mkdir()  # a folder named like an index is a folder
  assert video.source_kind(str(tmp_path / "3")) == "images"


def test_reader_gives_rate_size_times_and_frames(clip):
  reader = video.VideoReader(str(clip))
  assert (reader.fps, reader.width, reader.height, reader.num_frames) == (FPS, W, H, N)
  got = list(reader.frames())
  reader.close()
  assert [i for i, _, _ in got] == list(range(N))
  np.testing.assert_allclose([t for _, t, _ in got], np.arange(N) / FPS, atol=1e-6)
  assert got[0][2].shape == (H, W, 3) and got[0][2].dtype == np.uint8
  # lossy, but the figure is where it was drawn
  assert np.abs(got[3][2].astype(int) - _figure_frame(3)).mean() < 8


def test_writer_pads_odd_sizes_and_keeps_the_rate(tmp_path):
  path = tmp_path / "odd.mp4"
  with open(path, "wb") as f:
    writer = video.VideoWriter(f, fractions.Fraction(30000, 1001), 75, 45)
    for i in range(5):
      writer.write(_figure_frame(i, 75, 45))
    writer.close()
  frames, times, rate = _read_video(path)
  assert frames.shape == (5, 46, 76, 3) and rate == fractions.Fraction(30000, 1001)
  np.testing.assert_allclose(times, np.arange(5) * 1001 / 30000, atol=1e-3)


def test_parse_parts():
  assert visualize.parse_parts("skeleton, boxes") == ("boxes", "skeleton")
  assert visualize.parse_parts("all") == visualize.PARTS and visualize.parse_parts("") == ()
  with pytest.raises(ValueError, match="unknown part.*faces"):
    visualize.parse_parts("boxes,faces")


# --- a video file, with tiny untrained networks -------------------------------------------------


def test_video_gives_an_annotated_video_and_one_json_entry_per_frame(tiny_stages, load_once,
                                                                     clip, tmp_path, capsys):
  branches = tiny_stages[0]
  out = tmp_path / "out"
  before = clip.read_bytes()
  got = video.predict_source(str(branches.parent), str(clip), str(out), min_score=0.0)
  assert clip.read_bytes() == before
  assert sorted(os.listdir(out)) == [files.MANIFEST, "walk.json", "walk.mp4"]
  assert got == {"frames": N, "video": str(out / "walk.mp4"), "json": str(out / "walk.json"),
                 "interrupted": False}
  frames, times, rate = _read_video(out / "walk.mp4")
  assert frames.shape == (N, H, W, 3)  # the source's frames at its own size
  assert rate == FPS
  np.testing.assert_allclose(times, np.arange(N) / FPS, atol=1e-6)
  doc = json.loads((out / "walk.json").read_text())
  assert (doc["fps"], doc["width"], doc["height"]) == (FPS, W, H)
  assert [f["frame"] for f in doc["frames"]] == list(range(N))
  np.testing.assert_allclose([f["time_s"] for f in doc["frames"]], times, atol=1e-6)
  people = [p for f in doc["frames"] for p in f["people"]]
  assert people, "an untrained network with min_score=0 still finds boxes"
  for p in people:
    assert np.shape(p["keypoints"]) == (17, 3) and len(p["box"]) == 4 and 0 <= p["score"] <= 1
    for v in [*np.ravel(p["keypoints"]), *p["box"]]:  # 3 decimals, as the JSON says
      assert v == round(v, 3)
  printed = capsys.readouterr()
  assert f"{N} frames written to {out / 'walk.mp4'}" in printed.out
  assert f"{N}/{N} [" in printed.err and "frame/s" in printed.err  # the progress bar


def test_frame_record_rounds_float32_values_to_3_decimals():
  people = {"keypoints": np.full((1, 17, 3), 117.754, np.float32),
            "boxes": np.array([[1.0001, 2.5, 117.754, 4]], np.float32),
            "scores": np.array([0.123456], np.float32)}
  text = json.dumps(video.frame_record(3, 0.1, people))
  assert '"box": [1.0, 2.5, 117.754, 4.0]' in text and "117.75399" not in text
  assert '"score": 0.12346' in text


def test_max_frames_and_what_to_draw(tiny_stages, load_once, clip, tmp_path):
  branches = tiny_stages[0]
  out = tmp_path / "out"
  got = video.predict_video(str(branches.parent), str(clip), str(out), max_frames=5, parts=(),
                            min_score=0.0)
  assert got["frames"] == 5
  frames, _, _ = _read_video(out / "walk.mp4")
  assert len(frames) == 5
  # nothing drawn: the output is the (re-encoded) source
  assert np.abs(frames[4].astype(int) - _figure_frame(4)).mean() < 8
  assert len(json.loads((out / "walk.json").read_text())["frames"]) == 5
  # The same run again replaces its own outputs; another video named walk.* does not.
  video.predict_video(str(branches.parent), str(clip), str(out), max_frames=2)
  before = {n: (out / n).read_bytes() for n in ("walk.mp4", "walk.json")}
  other = tmp_path / "more"
  other.mkdir()
  (other / "walk.mov").write_bytes(clip.read_bytes())
  with pytest.raises(errors.ConfigError, match=r"walk\.json holds the output for .*walk\.mp4, "
                                               r"not for .*walk\.mov"):
    video.predict_video(str(branches.parent), str(other / "walk.mov"), str(out))
  assert {n: (out / n).read_bytes() for n in ("walk.mp4", "walk.json")} == before


# --- webcams (faked) ----------------------------------------------------------------------------


class _FakeCamera:
  """Stands in for video.Camera: `limit` frames of 80 x 64 at 15 frames/s, then Ctrl-C (or
  endless frames when limit is None)."""
  limit = None
  opened = []

  def __init__(self, index):
    self.index, self.fps, self.width, self.height = index, fractions.Fraction(15), 80, 64
    self.closed = False
    _FakeCamera.opened.append(self)

  def frames(self):
    i = 0
    while self.limit is None or i < self.limit:
      yield i / 15, _figure_frame(i, 80, 64)
      i += 1
    raise KeyboardInterrupt

  def close(self):
    self.closed = True


def test_ctrl_c_during_a_video_keeps_the_frames_done(tiny_stages, load_once, clip, tmp_path,
                                                     monkeypatch):
  frames = video.VideoReader.frames

  def frames_then_ctrl_c(self):
    for i, frame in enumerate(frames(self)):
      if i == 9:  # batches of 8 or 4: frame 8, of an unfinished batch, is dropped
        raise KeyboardInterrupt
      yield frame
  monkeypatch.setattr(video.VideoReader, "frames", frames_then_ctrl_c)
  out = tmp_path / "out"
  got = video.predict_source(str(tiny_stages[0].parent), str(clip), str(out), min_score=0.0)
  assert got["frames"] == 8 and got["interrupted"]
  doc = json.loads((out / "walk.json").read_text())
  assert doc["interrupted"] is True and [f["frame"] for f in doc["frames"]] == list(range(8))
  assert _read_video(out / "walk.mp4")[0].shape[0] == 8


@pytest.mark.parametrize("limit,max_frames,expected", [(None, 7, 7), (11, 0, 8)])
def test_a_webcam_runs_until_max_frames_or_ctrl_c(tiny_stages, load_once, tmp_path, monkeypatch,
                                                  limit, max_frames, expected):
  # Ctrl-C after 11 frames with batches of 4 (the 4 test devices): the 3 of the unfinished batch
  # are dropped, the 8 before are kept.
  branches = tiny_stages[0]
  monkeypatch.setattr(_FakeCamera, "limit", limit)
  monkeypatch.setattr(video, "Camera", _FakeCamera)
  out = tmp_path / "out"
  got = video.predict_source(str(branches.parent), "0", str(out), max_frames=max_frames,
                             camera_batch_size=1)
  assert _FakeCamera.opened[-1].index == 0 and _FakeCamera.opened[-1].closed
  assert got["frames"] == expected and got["interrupted"] == (limit is not None)
  names = sorted(n for n in os.listdir(out) if n != files.MANIFEST)
  assert len(names) == 2 and names[0].startswith("webcam0_") and names[0].endswith(".json")
  assert names[1] == names[0].replace(".json", ".mp4")
  frames, times, rate = _read_video(out / names[1])
  assert frames.shape == (expected, 64, 80, 3) and rate == 15
  doc = json.loads((out / names[0]).read_text())
  assert len(doc["frames"]) == expected
  np.testing.assert_allclose([f["time_s"] for f in doc["frames"]], np.arange(expected) / 15,
                             atol=1e-6)


def test_a_webcam_that_cannot_open_is_a_user_error():
  with pytest.raises(errors.DataError, match=r"--input=9: webcam 9 \(/dev/video9\) cannot be "
                                             "opened"):
    video.Camera(9)


# --- images: a glob, one image at its own resolution --------------------------------------------


def test_a_glob_input(tiny_stages, load_once, tmp_path):
  branches = tiny_stages[0]
  d = tmp_path / "D"
  d.mkdir()
  for name, size in (("a.png", (40, 30)), ("b.jpg", (64, 48)), ("c.png", (20, 20))):
    Image.fromarray(_figure_frame(1, *size)).save(d / name)
  out = tmp_path / "out"
  written, skipped = video.predict_source(str(branches.parent), str(d / "*.png"), str(out),
                                          min_score=0.0)
  assert (written, skipped) == (2, [])
  assert sorted(os.listdir(out)) == [files.MANIFEST, "a.png", "c.png", "predictions.json"]
  records = json.loads((out / "predictions.json").read_text())
  assert {r["file_name"] for r in records} <= {"a.png", "c.png"} and records
  for r in records:
    assert r["image_id"] == {"a.png": 0, "c.png": 1}[r["file_name"]]
    assert r["category_id"] == 1 and len(r["keypoints"]) == 51 and len(r["bbox"]) == 4
  with pytest.raises(errors.MissingFileError, match="matches no image file"):
    video.predict_source(str(branches.parent), str(d / "*.gif"), str(out))
  with pytest.raises(errors.ConfigError, match="is the --input folder"):
    video.predict_source(str(branches.parent), str(d / "*.png"), str(d))


def test_a_single_image_is_drawn_at_its_own_resolution(tiny_stages, load_once, tmp_path):
  branches = tiny_stages[0]
  src = tmp_path / "000000000139.jpg"  # a COCO-style name: its number is the image_id
  Image.fromarray(_figure_frame(2, 300, 200)).save(src)
  out = tmp_path / "out"
  video.predict_source(str(branches.parent), str(src), str(out), min_score=0.0)
  with Image.open(out / "000000000139.png") as drawn:
    assert drawn.size == (300, 200)  # not the network's 96 px
  records = json.loads((out / "predictions.json").read_text())
  assert records and all(r["image_id"] == 139 for r in records)


# --- the command: bad inputs are one line, exit status 2 ----------------------------------------


def test_bad_inputs_are_one_line_errors(tmp_path, clip):
  broken = tmp_path / "broken.mp4"
  broken.write_bytes(b"not a video" * 10)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  cases = [
      (broken, tmp_path / "o1", f"--input={broken} cannot be read as a video"),
      ("9", tmp_path / "o2", "--input=9: webcam 9 (/dev/video9) cannot be opened"),
      (clip, clip.parent, f"--output={clip.parent}: writing walk.mp4 there would replace the "
                          f"input {clip}"),
  ]
  for source, output, expected in cases:
    proc = subprocess.run(
        [sys.executable, "predict.py", f"--model={tmp_path / 'no_model'}", f"--input={source}",
         f"--output={output}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"predict.py: error: {expected}"), lines[0]
    assert not os.path.exists(output) or output == clip.parent
  assert sorted(os.listdir(clip.parent)) == ["walk.mp4"]
