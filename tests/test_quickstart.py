"""`python -m mpn_jax.quickstart` end to end with the smoke preset, twice (the second run reuses),
and what it writes to the terminal: each message once, no warning."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import TEST_XLA_FLAGS

pytestmark = pytest.mark.slow  # two runs of the whole quickstart (smoke preset): ~1-3 min

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir):
  env = dict(os.environ)
  env["XLA_FLAGS"] = TEST_XLA_FLAGS  # one CPU device, as on a user's machine (conftest)
  proc = subprocess.run(
      [sys.executable, "-m", "mpn_jax.quickstart", f"--workdir={workdir}", "--preset=smoke"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(workdir, first run, second run): completed processes."""
  workdir = tmp_path_factory.mktemp("quickstart")
  return workdir, _run(workdir), _run(workdir)


@pytest.fixture(scope="module")
def two_runs(runs):
  """(workdir, first run's stdout, second run's stdout)."""
  workdir, first, second = runs
  return workdir, first.stdout, second.stdout


def test_first_run_trains_evaluates_and_draws(two_runs):
  workdir, first, _ = two_runs
  assert "building the synthetic dataset" in first
  assert "training stage one" in first and "training stage two" in first
  last = first.strip().splitlines()[-1]
  assert re.fullmatch(r"keypoint AP = [01]\.\d{3}", last), last
  with open(workdir / "eval" / "pipeline_stats.json") as f:
    stats = json.load(f)
  assert last == f"keypoint AP = {stats['AP']:.3f}"  # the printed number is the COCOeval one
  assert (workdir / "eval" / "center_stats.json").is_file()
  assert "nearest-centre baseline" in first
  pictures = workdir / "pictures"
  assert f"pictures (skeletons drawn on validation images): {pictures}" in first
  assert len([p for p in os.listdir(pictures) if p.endswith(".png")]) == 4  # num_val of smoke


def test_second_run_reuses_everything(two_runs):
  _, first, second = two_runs
  for what in ("the synthetic dataset", "stage one", "stage two", "the evaluation"):
    assert f"reusing {what}" in second, second
  assert "training stage" not in second
  assert second.strip().splitlines()[-1] == first.strip().splitlines()[-1]


def test_an_evaluation_written_since_by_evaluate_py_is_not_reused(runs):
  # evaluate.py on other images writes the same default file: the next quickstart evaluates again.
  workdir, first, _ = runs
  stats_file = workdir / "eval" / "pipeline_stats.json"
  stats_file.write_text(json.dumps(dict(json.loads(stats_file.read_text()), AP=0.0)))
  third = _run(workdir).stdout
  assert "evaluating the whole pipeline (PRN assignment)" in third, third
  assert "reusing the evaluation in" in third  # the nearest-centre one was not touched
  assert third.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]


# An absl log line: "W1202 16:21:57.143286 140078946708352 checkpoint.py:202] message".
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] (.*)$")


@pytest.mark.parametrize("which", [1, 2])
def test_output_has_no_warning_and_each_message_once(runs, which):
  """Nothing on a normal run reads as a warning (absl W/E lines, Python warnings, native
  libraries' WARNING notices), and no message is both printed and logged or printed twice."""
  proc = runs[which]
  out, err = proc.stdout.splitlines(), proc.stderr.splitlines()
  warnings = [line for line in out + err
              if re.match(r"^[WEF]\d{4} ", line) or "WARNING" in line
              or re.search(r"\w+Warning: ", line)]
  assert not warnings, "\n".join(warnings)
  said = [line for line in out if line.startswith("[quickstart]")]
  assert len(said) == len(set(said)), said
  logged = {m.group(2).strip() for m in map(_ABSL_LINE.match, err) if m}
  twice = logged & {line.strip() for line in out}
  assert not twice, f"printed and logged: {sorted(twice)}"
  # Training progress is one line per interval, with the loss terms, steps/s and ETA; the scalars
  # and the config go to TensorBoard, not to the console a second time.
  assert not [line for line in err if "logging_writer.py" in line or "[Hyperparameters]" in line]
  assert not [line for line in out + err if "Downloading and preparing" in line]  # TFDS's; no download
  if which == 1:
    progress = [m.group(2) for m in map(_ABSL_LINE.match, err) if m and " steps/s, ETA " in m.group(2)]
    assert progress and all(re.fullmatch(
        r"step \d+/\d+: loss [-\d.e+]+ \(.*grad_norm [-\d.e+]+.*learning_rate .*\), "
        r"[\d.]+ steps/s, ETA \d+h\d\dm\d\ds", p) for p in progress), progress[:3]


def test_bad_preset_is_a_clear_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "mpn_jax.quickstart", f"--workdir={tmp_path}", "--preset=huge"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "--preset" in proc.stderr and "synthetic" in proc.stderr


def test_coco_samples_configs(tmp_path, coco_dir):
  """--preset=coco_samples: stage one on the real train samples with the coco data path, the PRN
  on the real annotation-only split, scored on the train and val samples."""
  from mpn_jax import errors  # pylint: disable=g-import-not-at-top
  from mpn_jax import quickstart  # pylint: disable=g-import-not-at-top
  branches, prn = quickstart.make_configs(tmp_path, "coco_samples", str(coco_dir))
  assert branches.dataset.name == "coco_keypoints" and branches.dataset.coco_dir == str(coco_dir)
  assert branches.dataset.train_ann == "person_keypoints_train2017_sample.json"
  assert branches.dataset.keep_empty == 0.0 and branches.input.augment.center == "person"
  assert prn.preset == "coco_small" and prn.data.data_dir == str(coco_dir)
  assert prn.eval.pictures_dir == str(tmp_path / "pictures")
  assert tuple(prn.inference.scales) == tuple(branches.inference.scales)
  assert prn.inference.assign_method == "greedy"  # detector boxes overlap: the per-box rule
  assert prn.inference.prn_input == "heatmaps"  # real heatmaps: the paper's crops, not peaks
  assert prn.inference.iou_threshold == 0.4  # and the duplicates suppressed harder
  sets = quickstart.eval_sets("coco_samples", str(coco_dir))
  assert [s[0] for s in sets] == ["train", "validation"]
  for _, ann, images in sets:
    with open(ann) as f:
      files = {im["file_name"] for im in json.load(f)["images"]}
    assert files <= set(os.listdir(images))
    assert len(files) == {"train2017": 80, "val2017": 127}[os.path.basename(images)]
  with pytest.raises(errors.MissingFileError, match="--coco_dir"):
    quickstart.make_configs(tmp_path, "coco_samples", str(tmp_path / "nowhere"))


def test_a_stage_stopped_on_request_ends_the_quickstart(tmp_path, monkeypatch, capsys):
  """SIGTERM stops stage one with a checkpoint (training.loop); the quickstart then exits 143 with
  one line saying how to resume, instead of training the PRN on a half-trained stage one."""
  from mpn_jax import quickstart  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import loop  # pylint: disable=g-import-not-at-top
  stages = []

  def stopped(config, workdir):
    stages.append(config.stage)
    state = type("State", (), {"step": 7})()
    return loop.Result(state=state, losses={}, eval_metrics={}, stopped_early=True)

  monkeypatch.setattr(quickstart.training, "train_and_evaluate", stopped)
  monkeypatch.setattr(quickstart, "prepare_dataset", lambda branches: None)
  with pytest.raises(SystemExit) as exit_info:
    quickstart.run(str(tmp_path), "smoke")
  assert exit_info.value.code == quickstart.STOPPED_EXIT_STATUS == 143
  assert stages == ["branches"]
  out = capsys.readouterr().out
  assert "stopped at step 7/" in out and "run the same command again to resume" in out
