"""Every command answers a user error with one line: `<command>: error: <what and what to do>`,
exit status 2, no traceback. Each case runs the real command in a fresh process."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")

TRAIN = ["train.py", "--config=configs/prn.py:smoke"]
EVAL_GT = ["evaluate.py", "--config.eval.mode=prn_gt",
           "--config.eval.assign=center"]  # the nearest-centre rule: no checkpoint needed
PERSON = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [10, 10, 20, 40],
          "area": 800.0, "num_keypoints": 17, "keypoints": [15, 20, 2] * 17, "segmentation": []}

# (id, command after `python`, substrings of the error line, needs ../shared, files that must not
# exist afterwards). {T} is the test's tmp folder, prepared by `files`.
CASES = [
    ("train_misspelt_field", TRAIN + ["--workdir={T}/w", "--config.train.num_stepz=3"],
     ["--config.train.num_stepz", "'num_steps'"], False, ["w"]),
    ("train_misspelt_group", TRAIN + ["--workdir={T}/w", "--config.trian.num_steps=3"],
     ["--config.trian.num_steps", "'train'"], False, ["w"]),
    ("train_missing_config", ["train.py", "--config=configs/nope.py", "--workdir={T}/w"],
     ["--config=configs/nope.py", "not found"], False, ["w"]),
    ("train_unknown_preset", ["train.py", "--config=configs/prn.py:smok", "--workdir={T}/w"],
     ["unknown preset 'smok'"], False, ["w"]),
    ("train_value_of_wrong_type", TRAIN + ["--workdir={T}/w", "--config.train.num_steps=abc"],
     ["--config.train.num_steps", "abc"], False, ["w"]),
    ("train_unknown_optimizer", TRAIN + ["--workdir={T}/w", "--config.train.optimizer=adamx"],
     ["config.train.optimizer='adamx'", "adam"], False, ["w"]),
    ("train_negative_steps", TRAIN + ["--workdir={T}/w", "--config.train.num_steps=-5"],
     ["config.train.num_steps=-5", "positive"], False, ["w"]),
    ("train_no_workdir", TRAIN, ["--workdir"], False, []),
    ("train_unknown_flag", TRAIN + ["--workdir={T}/w", "--bogus=1"], ["bogus"], False, ["w"]),
    ("train_workdir_is_a_file", TRAIN + ["--workdir={T}/afile"], ["--workdir=", "is a file"],
     False, []),
    ("train_workdir_under_a_file", TRAIN + ["--workdir={T}/afile/w"], ["--workdir=", "afile"],
     False, []),
    ("train_missing_annotation_file", TRAIN + ["--workdir={T}/w",
                                               "--config.data.val_file={T}/missing.json"],
     ["{T}/missing.json", "does not exist"], True, []),
    ("train_truncated_annotation_file", TRAIN + ["--workdir={T}/w",
                                                 "--config.data.val_file={T}/truncated.json"],
     ["{T}/truncated.json", "not valid JSON"], True, []),
    ("train_no_annotations_key", TRAIN + ["--workdir={T}/w",
                                          "--config.data.val_file={T}/no_annotations.json"],
     ["{T}/no_annotations.json", "'annotations'"], True, []),
    ("train_nan_keypoint", TRAIN + ["--workdir={T}/w", "--config.data.val_file={T}/nan.json"],
     ["{T}/nan.json", "keypoints", "id 1"], True, []),
    ("train_48_keypoint_values", TRAIN + ["--workdir={T}/w",
                                          "--config.data.val_file={T}/short.json"],
     ["{T}/short.json", "keypoints", "id 1"], True, []),
    ("evaluate_no_people", EVAL_GT + ["--model={T}/w", "--config.eval.ann_file={T}/empty.json",
                                      "--config.eval.output={T}/stats.json"],
     ["{T}/empty.json", "no person"], False, ["stats.json"]),
    ("evaluate_missing_annotation_file", EVAL_GT + ["--model={T}/w",
                                                    "--config.eval.ann_file={T}/missing.json"],
     ["{T}/missing.json", "does not exist"], False, []),
    ("evaluate_unwritable_output", EVAL_GT + ["--model={T}/w",
                                              "--config.eval.ann_file={T}/one.json",
                                              "--config.eval.output={T}/afile/stats.json"],
     ["--config.eval.output={T}/afile/stats.json", "is a file"], False, []),
    ("evaluate_output_over_the_annotation_file", EVAL_GT + [
        "--model={T}/w", "--config.eval.ann_file={T}/one.json",
        "--config.eval.output={T}/one.json"],
     ["--config.eval.output={T}/one.json", "which it did not write"], False, ["w"]),
    ("evaluate_results_over_a_file_of_the_users", EVAL_GT + [
        "--model={T}/w", "--config.eval.ann_file={T}/one.json",
        "--config.eval.results_file={T}/notes.json"],
     ["--config.eval.results_file={T}/notes.json", "which it did not write"], False, ["w"]),
    ("evaluate_annotation_file_without_images", EVAL_GT + [
        "--model={T}/w", "--config.eval.ann_file={T}/no_images.json"],
     ["{T}/no_images.json", "'images'"], False, []),
    ("evaluate_annotation_of_no_image", EVAL_GT + [
        "--model={T}/w", "--config.eval.ann_file={T}/orphan.json"],
     ["{T}/orphan.json", "image_id 7", "not the id of any entry of 'images'"], False, []),
    ("train_validation_annotation_of_no_image", TRAIN + [
        "--workdir={T}/w", "--config.data.val_file={T}/orphan.json",
        "--config.train.prn_gt_ap=True"],
     ["{T}/orphan.json", "image_id 7"], True, []),
    ("evaluate_config_file", ["evaluate.py", "--model={T}/w", "--config=configs/prn.py:smoke"],
     ["--config=configs/prn.py:smoke", "reads the model's config from --model"], False, []),
    ("evaluate_unknown_mode", ["evaluate.py", "--model={T}/w", "--config.eval.mode=bogus"],
     ["config.eval.mode", "bogus"], False, ["w"]),
    ("evaluate_no_checkpoint", ["evaluate.py", "--model={T}/w", "--config.eval.mode=prn_gt"],
     ["no prn checkpoint", "train.py"], False, []),
    ("evaluate_misspelt_field", ["evaluate.py", "--model={T}/w", "--config.eval.mdoe=prn_gt"],
     ["--config.eval.mdoe"], False, []),
    ("predict_no_images_folder", ["predict.py", "--model={T}/w", "--input={T}/missing",
                                  "--output={T}/out"], ["--input", "{T}/missing"], False,
     ["out"]),
    ("predict_output_is_the_images_folder", ["predict.py", "--model={T}/w",
                                             "--input={T}/images", "--output={T}/images"],
     ["--output", "--input"], False, []),
    ("datasets_no_coco_dir", ["-m", "mpn_jax.data.datasets", "--name=coco_keypoints",
                              "--data_dir={T}/tfds"], ["--coco_dir", "--download"], False,
     ["tfds"]),
    ("weights_missing_input", ["-m", "mpn_jax.weights", "--source=torchvision",
                               "--input={T}/missing.pth", "--output={T}/weights"],
     ["{T}/missing.pth", "does not exist"], False, ["weights"]),
    ("weights_output_exists", ["-m", "mpn_jax.weights", "--source=torchvision",
                               "--input={T}/afile", "--output={T}/images"],
     ["--output={T}/images", "already exists"], False, []),
    ("weights_output_metadata_exists", ["-m", "mpn_jax.weights", "--source=torchvision",
                                        "--input={T}/afile", "--output={T}/notes"],
     ["--output={T}/notes", "notes.json already exists"], False, ["notes"]),
    ("benchmark_unknown_part", ["-m", "mpn_jax.benchmark", "--parts=bogus"], ["--parts", "bogus"],
     False, []),
    ("benchmark_unwritable_output", ["-m", "mpn_jax.benchmark", "--parts=peak",
                                     "--output={T}/afile/bench.json"],
     ["--output={T}/afile/bench.json"], False, []),
    ("quickstart_workdir_is_a_file", ["-m", "mpn_jax.quickstart", "--preset=smoke",
                                      "--workdir={T}/afile"], ["{T}/afile"], False, []),
]


def _files(tmp):
  """The inputs the cases point at."""
  (tmp / "afile").write_text("the user's own file\n")
  (tmp / "images").mkdir()
  (tmp / "images" / "photo.jpg").write_bytes(b"not really a jpeg")
  image = {"id": 1, "width": 64, "height": 64, "file_name": "a.jpg"}

  def write(name, annotations, **extra):
    data = {"images": [image], "annotations": annotations, "categories": [{"id": 1}], **extra}
    (tmp / name).write_text(json.dumps(data))

  write("empty.json", [])
  write("orphan.json", [dict(PERSON, image_id=7)])
  (tmp / "no_images.json").write_text(json.dumps({"annotations": [PERSON]}))
  (tmp / "notes.json").write_text('{"my notes": 1}')
  write("one.json", [PERSON])
  write("nan.json", [dict(PERSON, keypoints=[15, float("nan"), 2] + [15, 20, 2] * 16)])
  write("short.json", [dict(PERSON, keypoints=[15, 20, 2] * 16)])
  (tmp / "no_annotations.json").write_text(json.dumps({"images": [image]}))
  (tmp / "truncated.json").write_text(json.dumps({"images": [image], "annotations": [PERSON]})[:90])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line(case, tmp_path, request):
  name, argv, expected, needs_shared, absent = case
  if needs_shared:  # the PRN smoke preset's training file is read before the bad one
    request.getfixturevalue("coco_dir")
  _files(tmp_path)
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  argv = [a.replace("{T}", str(tmp_path)) for a in argv]
  proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
  assert len(errors) == 1, proc.stderr[-3000:]
  line = errors[0]
  assert line == proc.stderr.strip().splitlines()[-1]  # the last word
  prog = argv[0] if argv[0] != "-m" else argv[1]
  assert line.startswith(f"{prog}: error: "), line
  for text in expected:
    assert text.replace("{T}", str(tmp_path)) in line, line
  for rel in absent:
    assert not (tmp_path / rel).exists(), f"{name} left {rel} behind"
  # Nothing the user had was changed.
  assert {p: p.read_bytes() for p in before} == before


# The shell of every command (mpn_jax.cli.run) with a `main` that fails as a write or a Ctrl-C does.
_SHELL = """
import errno, sys
from mpn_jax import cli
def main(argv):
  what = sys.argv[1]
  if what == "interrupted":
    raise KeyboardInterrupt
  raise OSError(errno.ENOSPC if what == "disk_full" else errno.EFBIG,
                "No space left on device" if what == "disk_full" else "File too large",
                *([] if what == "disk_full" else ["/out/pic.png"]))
cli.run(main, "tool.py")
"""


@pytest.mark.parametrize("what,status,words", [
    ("interrupted", 130, ["tool.py: interrupted (Ctrl-C)"]),
    ("disk_full", 2, ["tool.py: error: cannot write: No space left on device", "free some space"]),
    ("file_too_large", 2, ["tool.py: error: /out/pic.png: File too large", "size limit"]),
])
def test_write_failures_and_ctrl_c_are_one_line(what, status, words):
  proc = subprocess.run([sys.executable, "-c", _SHELL, what], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == status, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr


def test_a_full_disk_during_evaluate_names_the_file_and_keeps_the_old_one(tmp_path):
  """A file-size limit stands in for a full disk (both fail the write half-way)."""
  _files(tmp_path)
  stats = tmp_path / "stats.json"
  argv = EVAL_GT + [f"--model={tmp_path}/w", f"--config.eval.ann_file={tmp_path}/one.json",
                    f"--config.eval.output={stats}"]
  ok = subprocess.run([sys.executable, *argv], cwd=REPO, env=ENV, capture_output=True, text=True,
                      timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  before = stats.read_bytes()
  # A 64-byte limit set by a small launcher that then execs the command; not by a preexec_fn:
  # forking this process (JAX is loaded) is unsafe.
  launcher = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)); "
              "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
  proc = subprocess.run([sys.executable, "-c", launcher, *argv], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("evaluate.py: error: ") and "File too large" in line, line
  assert str(tmp_path) in line  # names the file it could not write
  assert stats.read_bytes() == before
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("script,flag", [("predict.py", "--input"), ("export.py", "--format"),
                                         ("evaluate.py", "--model"), ("train.py", "--workdir")])
def test_help_of_a_root_script_lists_its_flags(script, flag):
  # The flags live in mpn_jax.tools.<name>; absl's --help lists only the main module's key flags.
  proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300, check=False)
  assert f"  {flag}:" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]  # (absl exits 1)
