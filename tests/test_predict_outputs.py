"""mpn_jax.inference.images (predict.py on images) writes beside the user's images, never over them: the --output folder check,
one picture name per input, the count of files written, atomic writes, and the error when no
image could be read."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mpn_jax import errors
from mpn_jax import files
from mpn_jax import visualize
from mpn_jax.inference import images as image_files
from mpn_jax.inference import predictor as predictor_lib

from conftest import REPO
# Tiny randomly initialised stages saved as checkpoints (no training); imported so pytest uses it
# as a fixture of this module too.
from test_evaluate_cli import tiny_stages  # noqa: F401  pylint: disable=unused-import


def _names(*files):
  got = image_files.output_names([os.path.join("d", f) for f in files])
  return {os.path.basename(p): name for p, name in got.items()}


def _snapshot(folder):
  """{file name: bytes} of a folder's files (to show that nothing in it changed)."""
  return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))
          if (folder / n).is_file()}


def _image_folder(folder):
  """photo.jpg and photo.png (one stem, two images) and an unreadable broken.jpg."""
  folder.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).save(folder / "photo.jpg")
  Image.fromarray(rng.integers(0, 256, (20, 50, 3), np.uint8)).save(folder / "photo.png")
  (folder / "broken.jpg").write_bytes(b"not a jpeg")
  return folder


# --- picture names ------------------------------------------------------------------------------


def test_a_unique_stem_is_kept():
  assert _names("a.jpg", "b.PNG", "c.tiff") == {"a.jpg": "a.png", "b.PNG": "b.png",
                                                 "c.tiff": "c.png"}


def test_inputs_sharing_a_stem_take_their_whole_name():
  assert _names("photo.jpg", "photo.png", "other.jpeg") == {
      "photo.jpg": "photo.jpg.png", "photo.png": "photo.png.png", "other.jpeg": "other.png"}


def test_names_differing_in_case_are_distinct_files():
  assert _names("a.JPG", "a.jpg") == {"a.JPG": "a.JPG.png", "a.jpg": "a.jpg.png"}
  assert _names("A.jpg", "a.png") == {"A.jpg": "A.png", "a.png": "a.png"}


def test_a_stem_name_meeting_a_whole_name_takes_its_whole_name_too():
  # photo.jpg.png's stem name is photo.jpg.png, which photo.jpg takes (it shares "photo").
  assert _names("photo.jpg", "photo.png", "photo.jpg.png") == {
      "photo.jpg": "photo.jpg.png", "photo.png": "photo.png.png",
      "photo.jpg.png": "photo.jpg.png.png"}


def test_no_picture_is_named_like_the_predictions_file(tmp_path):
  (tmp_path / "predictions.json").write_text("{}")  # not an image: not listed
  for n in ("predictions.png", "predictions.json.jpg", "predictions.json.png"):
    Image.new("RGB", (2, 2)).save(tmp_path / n)
  paths = image_files.list_images(str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == [
      "predictions.json.jpg", "predictions.json.png", "predictions.png"]
  names = image_files.output_names(paths)
  assert image_files.PREDICTIONS_FILE not in names.values()
  assert len(set(names.values())) == len(paths)


def test_random_folders_never_map_two_inputs_to_one_name():
  rng = random.Random(0)
  parts, exts = ["a", "A", "a.jpg", "a.png", "b"], [".jpg", ".png", ".JPG", ".jpeg", ".png.png"]
  for _ in range(300):
    files = {rng.choice(parts) + rng.choice(exts) for _ in range(rng.randint(1, 8))}
    names = _names(*files)
    assert len(set(names.values())) == len(files), names
    assert all(n.endswith(".png") for n in names.values())
    for f, n in names.items():  # each name is the stem's or the whole name's
      assert n in (os.path.splitext(f)[0] + ".png", f + ".png")


# --- the --input folder and the --output folder ------------------------------------------------


def test_missing_or_empty_images_folder_is_a_user_error(tmp_path):
  for missing in ("nope", "clip.mp4"):  # a missing video lands here too: the message names videos
    with pytest.raises(errors.MissingFileError,
                       match=f"--input=.*{missing}: no such file or folder: .*a video file"):
      image_files.list_images(str(tmp_path / missing))
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(errors.MissingFileError, match="notes.txt is not a folder, an image file"):
    image_files.list_images(str(tmp_path / "notes.txt"))
  (tmp_path / "sub.jpg").mkdir()  # a folder with an image's name is no image
  with pytest.raises(FileNotFoundError, match="no image files"):  # still a FileNotFoundError
    image_files.list_images(str(tmp_path))


def _check(images, output):
  image_files.check_output(str(images), str(output),
                       image_files.output_names(image_files.list_images(str(images))))


@pytest.mark.parametrize("spelling", ["same", "inside", "dotdot", "link", "inside_link"])
def test_an_output_folder_in_the_images_folder_is_refused(tmp_path, spelling):
  images = _image_folder(tmp_path / "D")
  os.symlink(images, tmp_path / "L")
  output = {"same": images, "inside": images / "sub" / "out", "dotdot": images / "sub" / "..",
            "link": tmp_path / "L", "inside_link": tmp_path / "L" / "sub"}[spelling]
  with pytest.raises(errors.ConfigError) as raised:
    _check(images, output)
  message = str(raised.value)
  assert "\n" not in message
  assert f"--output={output} " in message and f"--input={images}" in message
  assert "choose an --output folder outside --input" in message
  where = "is the --input folder" if spelling in ("same", "dotdot", "link") else "is inside"
  assert where in message


def test_an_output_folder_beside_or_above_the_images_is_accepted(tmp_path):
  images = _image_folder(tmp_path / "D")
  _check(images, tmp_path / "D_predictions")
  _check(images, tmp_path)  # pictures land in tmp_path, not in tmp_path/D


def test_an_input_linking_into_the_output_folder_is_not_replaced(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  Image.new("RGB", (4, 4)).save(out / "mine.png")
  images = tmp_path / "D"
  images.mkdir()
  os.symlink(out / "mine.png", images / "mine.png")  # its picture would be out/mine.png
  with pytest.raises(errors.ConfigError, match=r"replace the file .*mine\.png.*links to"):
    _check(images, out)


def test_the_output_check_comes_before_any_checkpoint_is_loaded(tmp_path, monkeypatch):
  images = _image_folder(tmp_path / "D")
  before = _snapshot(images)

  def no_loading(*args, **kwargs):
    raise AssertionError("Predictor.load called before the --output check")
  monkeypatch.setattr(predictor_lib.Predictor, "load", no_loading)
  with pytest.raises(errors.ConfigError, match="--output"):
    image_files.predict_images(str(tmp_path / "no_model"), str(images), str(images / "x"))
  assert _snapshot(images) == before and not (images / "x").exists()


@pytest.mark.parametrize("theirs", ["photo.jpg.png", "predictions.json"])
def test_a_file_of_the_users_in_the_output_is_refused_before_loading(tmp_path, monkeypatch,
                                                                      theirs):
  images = _image_folder(tmp_path / "D")
  out = tmp_path / "out"
  out.mkdir()
  (out / theirs).write_text("mine")
  (out / "unrelated.txt").write_text("mine too")
  before = _snapshot(out)

  def no_loading(*args, **kwargs):
    raise AssertionError("Predictor.load called before the --output check")
  monkeypatch.setattr(predictor_lib.Predictor, "load", no_loading)
  with pytest.raises(errors.ConfigError,
                     match=rf"--output=.*would replace .*{theirs}, which it did not write"):
    image_files.predict_images(str(tmp_path / "no_model"), str(images), str(out))
  assert _snapshot(out) == before and sorted(os.listdir(out)) == sorted(before)


def test_recorded_outputs_may_be_replaced_by_a_later_run_and_others_not(tmp_path):
  out = tmp_path / "out"
  files.check_outputs(str(out), ["a.png", "p.json"], "--output=out", "tool")
  assert not out.exists()  # the check writes nothing
  files.record_outputs(str(out), ["a.png", "p.json"])
  (out / "a.png").write_text("first run")
  (out / "p.json").write_text("first run")
  files.check_outputs(str(out), ["a.png", "p.json"], "--output=out", "tool")  # a rerun: fine
  (out / "b.png").write_text("the user's")
  with pytest.raises(errors.ConfigError, match=r"would replace .*b\.png, which it did not write"):
    files.check_outputs(str(out), ["a.png", "b.png"], "--output=out", "tool")
  assert json.loads((out / files.MANIFEST).read_text()) == {"a.png": None, "p.json": None}


def test_an_output_made_from_another_input_is_not_replaced(tmp_path):
  out = tmp_path / "out"
  files.record_outputs(str(out), {"photo.png": "/a/photo.jpg", "p.json": "/a"})
  (out / "photo.png").write_text("from /a")
  (out / "p.json").write_text("from /a")
  files.check_outputs(str(out), {"photo.png": "/a/photo.jpg", "p.json": "/a"}, "--output=out",
                      "tool")  # the same inputs again: a rerun
  with pytest.raises(errors.ConfigError,
                     match=r"--output=out: .*photo\.png holds the output for /a/photo\.jpg, not "
                           r"for /b/photo\.jpg"):
    files.check_outputs(str(out), {"photo.png": "/b/photo.jpg"}, "--output=out", "tool")
  with pytest.raises(errors.ConfigError, match=r"p\.json holds the output for /a, not for /b"):
    files.check_outputs(str(out), {"p.json": "/b"}, "--output=out", "tool")
  files.check_outputs(str(out), ["p.json"], "--output=out", "tool")  # input unknown: as before
  # A manifest of the older kind (a list of names): the inputs are unknown, reruns replace.
  (out / files.MANIFEST).write_text(json.dumps(["photo.png"]))
  files.check_outputs(str(out), {"photo.png": "/b/photo.jpg"}, "--output=out", "tool")
  files.record_outputs(str(out), {"photo.png": "/b/photo.jpg"})
  assert json.loads((out / files.MANIFEST).read_text()) == {"photo.png": "/b/photo.jpg"}
  assert (out / "photo.png").read_text() == "from /a"  # checks and records write no output


def test_the_command_refuses_the_input_folder_as_output(tmp_path):
  images = _image_folder(tmp_path / "D")
  before = _snapshot(images)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "predict.py", f"--model={tmp_path / 'no_model'}", f"--input={images}",
       f"--output={images}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if "error:" in line]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith(f"predict.py: error: --output={images} is the --input folder")
  assert "Traceback" not in proc.stderr
  assert _snapshot(images) == before


# --- atomic writes ------------------------------------------------------------------------------


def test_save_png_replaces_the_file_whole(tmp_path):
  path = tmp_path / "a" / "pic.png"
  pic = np.full((6, 8, 3), 200, np.uint8)
  assert visualize.save_png(pic, str(path)) == str(path)
  assert np.array_equal(np.asarray(Image.open(path)), pic)
  mask = os.umask(0o022)
  os.umask(mask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as a plain open() would make it
  visualize.save_png(pic // 2, str(path))
  assert np.array_equal(np.asarray(Image.open(path)), pic // 2)
  assert os.listdir(path.parent) == ["pic.png"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
  path = tmp_path / "predictions.json"
  path.write_text('{"old": 1}')

  def half_then_fail(f):
    f.write(b'{"new": ')
    raise OSError(28, "No space left on device")
  with pytest.raises(OSError, match="No space left") as raised:
    files.replace_atomically(str(path), half_then_fail)
  assert raised.value.filename == str(path)  # named, for the one-line error of the commands
  assert path.read_text() == '{"old": 1}'
  assert os.listdir(tmp_path) == ["predictions.json"]


# --- the whole command on a folder, with tiny untrained networks --------------------------------

_LOADED = {}


@pytest.fixture()
def load_once(monkeypatch):
  """Loads (and compiles) each model once for the tests of this module."""
  load = predictor_lib.Predictor.load

  def cached(model, *args, **kwargs):
    if str(model) not in _LOADED:
      _LOADED[str(model)] = load(model, *args, **kwargs)
    return _LOADED[str(model)]
  monkeypatch.setattr(predictor_lib.Predictor, "load", cached)


def test_one_picture_per_readable_input_and_inputs_untouched(tiny_stages, load_once, tmp_path,
                                                             capsys):
  branches, _, _, _ = tiny_stages
  images = _image_folder(tmp_path / "D")
  before = _snapshot(images)
  out = tmp_path / "out"
  written, skipped = image_files.predict_images(str(branches.parent), str(images), str(out),
                                                min_score=0.0)
  printed = capsys.readouterr()
  assert _snapshot(images) == before  # byte for byte
  assert sorted(os.listdir(out)) == [files.MANIFEST, "photo.jpg.png", "photo.png.png",
                                     "predictions.json"]
  # The names predict claimed before it ran (broken.jpg's too), so that a rerun may replace them.
  # Each with the input it is made from: a later run may replace it only from that input.
  assert json.loads((out / files.MANIFEST).read_text()) == {
      "broken.png": str(images / "broken.jpg"), "photo.jpg.png": str(images / "photo.jpg"),
      "photo.png.png": str(images / "photo.png"), "predictions.json": str(images)}
  assert written == 2 == len(list(out.glob("*.png")))
  assert skipped == [str(images / "broken.jpg")]
  for name, size in (("photo.jpg", (40, 30)), ("photo.png", (50, 20))):
    with Image.open(out / (name + ".png")) as drawn:
      assert drawn.size == size  # drawn on that image's own pixels
  records = json.loads((out / "predictions.json").read_text())  # COCO keypoint results
  assert {r["file_name"] for r in records} <= {"photo.jpg", "photo.png"}
  for r in records:  # two stems, not numbers: image_id is the position in the sorted inputs
    assert r["image_id"] == {"photo.jpg": 1, "photo.png": 2}[r["file_name"]]
    assert r["category_id"] == 1 and len(r["keypoints"]) == 51 and len(r["bbox"]) == 4
  assert (f"2 pictures written to {out}, predictions in {out / 'predictions.json'}; "
          "1 unreadable image(s) skipped") in printed.out
  assert "images: 100%" in printed.err and "3/3 [" in printed.err  # the progress bar, every input
  # Another folder's photos into the same output: refused before any work, nothing replaced.
  other = _image_folder(tmp_path / "E")
  after = _snapshot(out)
  with pytest.raises(errors.ConfigError, match=r"--output=.*holds the output for .*D.*, not for "):
    image_files.predict_images(str(branches.parent), str(other), str(out))
  assert _snapshot(out) == after
  assert "broken.jpg" in printed.err


def test_a_folder_of_unreadable_images_is_an_error(tiny_stages, load_once, tmp_path):
  branches, _, _, _ = tiny_stages
  images = tmp_path / "D"
  images.mkdir()
  (images / "a.jpg").write_bytes(b"not a jpeg")
  (images / "b.png").write_bytes(b"\x89PNG broken")
  out = tmp_path / "out"
  with pytest.raises(errors.DataError) as raised:
    image_files.predict_images(str(branches.parent), str(images), str(out))
  message = str(raised.value)
  assert f"none of the 2 image file(s) in --input={images} could be read" in message
  assert str(images / "a.jpg") in message and "\n" not in message
  assert not out.exists()  # neither pictures nor an empty predictions.json


# --- the library: Predictor.load(model path)(images) --------------------------------------------


def test_predictor_takes_one_image_or_a_batch(tiny_stages, load_once):
  from mpn_jax import Predictor  # pylint: disable=g-import-not-at-top  (the lazy export)
  branches, _, _, _ = tiny_stages
  predictor = Predictor.load(str(branches.parent))
  rng = np.random.default_rng(0)
  small = rng.integers(0, 255, (30, 40, 3), np.uint8)
  large = rng.integers(0, 255, (50, 20, 3), np.uint8)
  one = predictor(small)
  assert set(one) == {"keypoints", "boxes", "scores"}
  p = len(one["scores"])
  assert one["keypoints"].shape == (p, 17, 3) and one["boxes"].shape == (p, 4)
  assert all(v.dtype == np.float32 for v in one.values())
  assert np.all(np.diff(one["scores"]) <= 0)  # decreasing score
  # Boxes lie within the image (30 x 40), not in the letterbox padding below it.
  assert np.all(one["boxes"] >= 0) and np.all(one["boxes"][:, [0, 2]] <= 40)
  assert np.all(one["boxes"][:, [1, 3]] <= 30)
  many = predictor([small, large] * 5)  # more images than one batch
  assert len(many) == 10
  for got in (many[0], many[8]):
    np.testing.assert_allclose(got["keypoints"], one["keypoints"], rtol=1e-5, atol=1e-4)
  assert len(predictor(np.stack([small, small]))) == 2
  assert p >= 2, "an untrained network still returns boxes"
  cut = float(one["scores"][p // 2])  # min_score keeps the people scoring at least this
  kept = predictor(small, min_score=cut)
  assert len(kept["scores"]) == int((one["scores"] >= cut).sum()) < p
  np.testing.assert_array_equal(kept["boxes"], one["boxes"][:len(kept["scores"])])
  with pytest.raises(errors.DataError, match="uint8"):
    predictor(small.astype(np.float32))
