r"""Videos and webcams in, an annotated video and per-frame JSON out (`python predict.py`).

  python predict.py --model=MODEL --input=clip.mp4 --output=OUT_DIR   # a video file
  python predict.py --model=MODEL --input=0 --output=OUT_DIR          # webcam 0, until Ctrl-C

A video clip.mp4 gives OUT_DIR/clip.mp4 (H.264, every frame with its people drawn on the frame's
own pixels, at the source's frame rate) and OUT_DIR/clip.json:

  {"source": ..., "fps": 25.0, "width": W, "height": H, "frames": [
     {"frame": 0, "time_s": 0.0, "people": [{"keypoints": [[x, y, score] * 17],
                                              "box": [x1, y1, x2, y2], "score": s}, ...]}, ...]}

(time_s: the frame's presentation time in the source, in seconds). Webcam N gives
OUT_DIR/webcamN_<YYYYmmdd-HHMMSS>.mp4 and .json the same way, at the frame rate the camera reports;
it runs until Ctrl-C or `max_frames`, and what was captured until then is kept. Frames go through
the jitted pipeline in fixed-size batches (`Predictor.__call__` pads the last one).

Decoding and encoding use PyAV (`av`, FFmpeg's libraries in the wheel, no system ffmpeg): exact
timestamps and frame rates, H.264 output, and webcams through libavdevice (v4l2 on Linux,
avfoundation on macOS). docs/predict.md has the choice. `predict_source` picks the kind of input.
"""

import datetime
import fractions
import os
import re
import sys
import time

from absl import logging
import jax
import numpy as np

from mpn_jax import errors
from mpn_jax import files
from mpn_jax import logs
from mpn_jax import visualize
from mpn_jax.inference import images as image_files
from mpn_jax.inference import predictor as predictor_lib

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts", ".mts", ".m2ts", ".3gp", ".ogv")
DEFAULT_CAMERA_FPS = fractions.Fraction(30)


def _av():
  """The PyAV module, or a one-line hint to install it."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.ConfigError("video and webcam input need PyAV: pip install av (or reinstall "
                             "mpn-jax, which depends on it)") from e
  return av


def source_kind(source):
  """What a --input is: 'camera' (an integer, e.g. '0', that names no file), 'video' (a file ending
  in one of VIDEO_EXTENSIONS, any case) or 'images' (a folder, an image file or a glob pattern;
  `images.list_images` checks it)."""
  text = str(source).strip()
  if re.fullmatch(r"\d+", text) and not os.path.exists(text):
    return "camera"
  if os.path.isfile(text) and text.lower().endswith(VIDEO_EXTENSIONS):
    return "video"
  return "images"


# --- decoding and encoding ----------------------------------------------------------------------


class VideoReader:
  """A video file's frames, decoded with PyAV.

  Attributes:
    path, fps (fractions.Fraction, the stream's average rate), width, height, num_frames (int, or
    None where the container does not say).
  """

  def __init__(self, path):
    av = _av()
    self.path = str(path)
    try:
      self._container = av.open(self.path)
    except (av.FFmpegError, OSError) as e:
      raise errors.DataError(f"--input={path} cannot be read as a video ({_reason(e)}); give a "
                             f"video file FFmpeg can decode ({', '.join(VIDEO_EXTENSIONS)})") from e
    if not self._container.streams.video:
      self._container.close()
      raise errors.DataError(f"--input={path} holds no video stream")
    self._stream = self._container.streams.video[0]
    self._stream.thread_type = "AUTO"
    rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
    self.fps = fractions.Fraction(rate) if rate else None
    if not self.fps:
      self.fps = DEFAULT_CAMERA_FPS
      logging.warning("%s: no frame rate in the file; writing at %s frames/s", path, self.fps)
    self.width = int(self._stream.codec_context.width)
    self.height = int(self._stream.codec_context.height)
    self.num_frames = int(self._stream.frames) or None

  def frames(self):
    """Yields (index, time_s, rgb [H, W, 3] uint8) in presentation order. A decoding error midway
    ends the stream with a warning (the frames before it are kept)."""
    av = _av()
    index = 0
    try:
      for frame in self._container.decode(self._stream):
        t = frame.time
        yield index, float(t) if t is not None else index / float(self.fps), frame.to_ndarray(
            format="rgb24")
        index += 1
    except av.FFmpegError as e:
      print(f"warning: {self.path}: decoding stopped after {index} frames: {_reason(e)}",
            file=sys.stderr)

  def close(self):
    self._container.close()


def camera_device(index, platform=sys.platform):
  """(url, FFmpeg input format, options) of webcam `index` for PyAV (libavdevice)."""
  if platform.startswith("linux"):
    return f"/dev/video{index}", "v4l2", {}
  if platform == "darwin":
    return f"{index}:none", "avfoundation", {"framerate": "30"}
  raise errors.ConfigError(f"--input={index}: webcams by index are supported on Linux (v4l2) and "
                           "macOS (avfoundation); on this system save a video and pass its file")


class Camera:
  """Webcam `index`, read live with PyAV. Tests replace this class (no camera in CI).

  Attributes: index, fps (fractions.Fraction, as the device reports it), width, height.
  """

  def __init__(self, index):
    av = _av()
    self.index = int(index)
    url, fmt, options = camera_device(self.index)
    try:
      self._container = av.open(url, format=fmt, options=options)
      self._stream = self._container.streams.video[0]
    except (av.FFmpegError, OSError, IndexError) as e:
      raise errors.DataError(f"--input={index}: webcam {index} ({url}) cannot be opened "
                             f"({_reason(e)}); check that it is connected and free, or give "
                             "another index") from e
    rate = self._stream.average_rate or self._stream.guessed_rate
    self.fps = fractions.Fraction(rate) if rate else DEFAULT_CAMERA_FPS
    self.width = int(self._stream.codec_context.width)
    self.height = int(self._stream.codec_context.height)

  def frames(self):
    """Yields (time_s since the first frame, rgb [H, W, 3] uint8) until the device stops."""
    first = None
    for frame in self._container.decode(self._stream):
      t = frame.time if frame.time is not None else time.monotonic()
      first = t if first is None else first
      yield float(t - first), frame.to_ndarray(format="rgb24")

  def close(self):
    self._container.close()


class VideoWriter:
  """Writes RGB frames as H.264 (yuv420p, libx264 from the PyAV wheel) into an MP4 file object at
  a constant frame rate; frame i is shown at i / fps. Odd widths or heights get one more column
  or row (a copy of the last one): yuv420p needs even sizes."""

  def __init__(self, fileobj, fps, width, height, crf=20):
    av = _av()
    self.width, self.height = int(width), int(height)
    self._container = av.open(fileobj, mode="w", format="mp4")
    self._stream = self._container.add_stream("libx264", rate=fractions.Fraction(fps))
    self._stream.width = self.width + self.width % 2
    self._stream.height = self.height + self.height % 2
    self._stream.pix_fmt = "yuv420p"
    self._stream.options = {"crf": str(crf)}
    self._time_base = 1 / fractions.Fraction(fps)
    self.count = 0

  def write(self, rgb):
    av = _av()
    rgb = np.asarray(rgb, np.uint8)
    if rgb.shape[:2] != (self.height, self.width):
      raise ValueError(f"VideoWriter: frame {rgb.shape[:2]}, expected {(self.height, self.width)}")
    if self.width % 2 or self.height % 2:
      rgb = np.pad(rgb, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame.pts = self.count
    frame.time_base = self._time_base
    for packet in self._stream.encode(frame):
      self._container.mux(packet)
    self.count += 1

  def close(self):
    for packet in self._stream.encode():  # flush the encoder
      self._container.mux(packet)
    self._container.close()


def _reason(e):
  return errors.one_line(getattr(e, "strerror", None) or str(e) or type(e).__name__, 300)


# --- the frame loop -----------------------------------------------------------------------------


def _rounded(values, decimals):
  # float64 first: a float32 rounded to 3 decimals prints as 117.75399780273438 in JSON.
  return np.round(np.asarray(values, np.float64), decimals).tolist()


def frame_record(index, time_s, people):
  """One frame's JSON entry: {frame, time_s, people: [{keypoints [17 x [x, y, score]], box
  [x1, y1, x2, y2], score}]} (pixels of the frame, 3 decimals)."""
  return {"frame": int(index), "time_s": round(float(time_s), 6),
          "people": [{"keypoints": _rounded(k, 3), "box": _rounded(b, 3),
                      "score": round(float(s), 5)}
                     for k, b, s in zip(people["keypoints"], people["boxes"], people["scores"])]}


def annotate(predictor, frames, writer, min_score=0.1, parts=visualize.PARTS,
             min_keypoint_score=0.0, max_frames=0, total=None, desc="frames", interruptible=False):
  """Runs the model on frames in batches of the predictor's size, draws the people on each frame
  and writes it; returns the frame records (`frame_record`) and whether Ctrl-C stopped it.

  Args:
    predictor: a `Predictor`.
    frames: iterator of (index, time_s, rgb [H, W, 3] uint8).
    writer: a `VideoWriter`.
    min_score, parts, min_keypoint_score: which people and what of them to draw and record.
    max_frames: stop after this many frames (0: all).
    total: the number of frames expected (for the progress bar), or None.
    desc: the progress bar's label.
    interruptible: a KeyboardInterrupt (Ctrl-C) ends the stream instead of propagating: the frames
      processed until then are kept (those of an unfinished batch are dropped).
  """
  records, batch, interrupted = [], [], False
  if max_frames:
    total = min(total, max_frames) if total else max_frames
  progress = logs.Progress(total, desc, unit="frame")

  def flush():
    found = predictor([rgb for _, _, rgb in batch])
    for (index, time_s, rgb), people in zip(batch, found):
      people = _above(people, min_score)
      writer.write(visualize.draw_people(rgb, keypoints=people["keypoints"],
                                         boxes=people["boxes"], scores=people["scores"],
                                         threshold=min_keypoint_score, parts=parts))
      records.append(frame_record(index, time_s, people))
      progress.update(1)
    batch.clear()

  try:
    for item in frames:
      batch.append(item)
      if len(batch) == predictor.batch_size:
        flush()
      if max_frames and len(records) + len(batch) >= max_frames:
        break
    if batch:
      flush()
  except KeyboardInterrupt:
    if not interruptible:
      raise
    interrupted = True
  finally:
    progress.close()
  return records, interrupted


def _above(people, min_score):
  keep = people["scores"] >= min_score
  return {k: v[keep] for k, v in people.items()}


def _input_key(source):
  """What the output folder's manifest records as an output's input: a file's absolute path, or
  the source as given ('webcam 0')."""
  return os.path.abspath(source) if os.path.isfile(source) else source


def _check_not_input(source, paths):
  """errors.ConfigError when a file to be written is the input file itself."""
  real = os.path.realpath(source)
  for path in paths:
    if os.path.realpath(path) == real:
      raise errors.ConfigError(
          f"--output={os.path.dirname(path)}: writing {os.path.basename(path)} there would replace "
          f"the input {source}; choose an --output folder other than the video's")


def _single_process():
  if jax.process_count() > 1:
    raise errors.ConfigError("video and webcam input run in one process; run predict.py without "
                             "jax.distributed (one host)")


def _write_json(path, source, fps, width, height, records, extra=None):
  import json  # pylint: disable=g-import-not-at-top
  doc = {"source": str(source), "fps": float(fps), "width": int(width), "height": int(height),
         **(extra or {}), "frames": records}
  files.replace_atomically(path, lambda f: f.write(json.dumps(doc).encode()))


def _run(predictor_factory, frames, source, fps, width, height, video_path, json_path, options,
         total, desc, interruptible):
  """The shared tail of `predict_video` and `predict_camera`: loads the model, writes the video
  (atomically; removed when no frame was processed) and then the JSON."""
  predictor = predictor_factory()
  state = {}

  def write_video(f):
    writer = VideoWriter(f, fps, width, height)
    state["records"], state["interrupted"] = annotate(
        predictor, frames, writer, total=total, desc=desc, interruptible=interruptible, **options)
    if not state["records"]:
      raise errors.DataError(f"--input={source}: no frame could be read and processed")
    writer.close()

  files.record_outputs(os.path.dirname(video_path),
                       {os.path.basename(p): _input_key(source) for p in (video_path, json_path)})
  files.replace_atomically(video_path, write_video)
  _write_json(json_path, source, fps, width, height, state["records"],
              {"interrupted": True} if state["interrupted"] else None)
  n = len(state["records"])
  print(f"{n} frames written to {video_path}, predictions in {json_path}"
        + (" (stopped by Ctrl-C)" if state["interrupted"] else ""))
  return {"frames": n, "video": video_path, "json": json_path,
          "interrupted": state["interrupted"]}


def predict_video(model, input_path, output, min_score=0.1, inference=None, batch_size=8,
                  parts=visualize.PARTS, min_keypoint_score=0.0, max_frames=0):
  """Runs the model on every frame of a video file: OUTPUT/<stem>.mp4 and OUTPUT/<stem>.json.

  The video is opened (and refused when unreadable) and the output checked before any checkpoint
  is loaded; both files are written whole (`files.replace_atomically`). Ctrl-C stops it and keeps
  the frames done (those of an unfinished batch dropped): the video so far and its JSON, marked
  "interrupted".

  Args:
    model: str, the model path (`Predictor.load`).
    input_path: str, the video file.
    output: str, the output folder (created when needed).
    min_score: draw and record people with at least this score.
    inference, batch_size: as `Predictor.load`.
    parts, min_keypoint_score: what to draw (`visualize.draw_people`).
    max_frames: stop after this many frames (0: the whole video).
  Returns:
    dict 'frames' (int), 'video', 'json' (paths), 'interrupted' (bool: Ctrl-C stopped it).
  Raises:
    errors.DataError: the file is no readable video, or no frame decodes.
    errors.ConfigError: an output file would replace the input, or a file predict did not write
      (`files.check_outputs`).
  """
  _single_process()
  reader = VideoReader(input_path)
  try:
    stem = os.path.splitext(os.path.basename(input_path))[0]
    video_path = os.path.join(output, stem + ".mp4")
    json_path = os.path.join(output, stem + ".json")
    _check_not_input(input_path, [video_path, json_path])
    files.check_outputs(output, {stem + ".mp4": _input_key(input_path),
                                 stem + ".json": _input_key(input_path)},
                        f"--output={output}", "predict.py")
    options = dict(min_score=min_score, parts=parts, min_keypoint_score=min_keypoint_score,
                   max_frames=max_frames)
    return _run(lambda: predictor_lib.Predictor.load(model, inference=inference,
                                                     batch_size=batch_size),
                reader.frames(), input_path, reader.fps, reader.width, reader.height, video_path,
                json_path, options, reader.num_frames, os.path.basename(input_path), True)
  finally:
    reader.close()


def predict_camera(model, index, output, min_score=0.1, inference=None, batch_size=1,
                   parts=visualize.PARTS, min_keypoint_score=0.0, max_frames=0):
  """Runs the model on webcam `index` until Ctrl-C or `max_frames`: OUTPUT/webcam<index>_<local
  date-time>.mp4 and .json (no window is shown). Arguments and result as `predict_video`
  ('interrupted': True when Ctrl-C ended it). The camera is opened before the model is loaded;
  errors.DataError when it cannot be."""
  _single_process()
  camera = Camera(int(index))
  try:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(output, f"webcam{int(index)}_{stamp}")
    files.check_outputs(output, [os.path.basename(base) + ext for ext in (".mp4", ".json")],
                        f"--output={output}", "predict.py")
    frames = ((i, t, rgb) for i, (t, rgb) in enumerate(camera.frames()))
    options = dict(min_score=min_score, parts=parts, min_keypoint_score=min_keypoint_score,
                   max_frames=max_frames)
    print(f"webcam {index}: {camera.width}x{camera.height} at {float(camera.fps):g} frames/s; "
          "Ctrl-C stops", file=sys.stderr)
    return _run(lambda: predictor_lib.Predictor.load(model, inference=inference,
                                                     batch_size=batch_size),
                frames, f"webcam {int(index)}", camera.fps, camera.width, camera.height,
                base + ".mp4", base + ".json", options, None, f"webcam {index}", True)
  finally:
    camera.close()


def predict_source(model, source, output, min_score=0.1, inference=None, batch_size=8,
                   parts=visualize.PARTS, min_keypoint_score=0.0, max_frames=0,
                   camera_batch_size=1):
  """`predict.py`: dispatches on `source_kind(source)` to `predict_camera`, `predict_video` or
  `images.predict_images` (max_frames is for videos and webcams; webcams run `camera_batch_size`
  frames per step, for low latency)."""
  kind = source_kind(source)
  common = dict(min_score=min_score, inference=inference, parts=parts,
                min_keypoint_score=min_keypoint_score)
  if kind == "camera":
    return predict_camera(model, int(source), output, batch_size=camera_batch_size,
                          max_frames=max_frames, **common)
  if kind == "video":
    return predict_video(model, source, output, batch_size=batch_size, max_frames=max_frames,
                         **common)
  return image_files.predict_images(model, source, output, batch_size=batch_size, **common)
