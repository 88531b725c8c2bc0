"""evaluate.py and predict.py on a model path: the three evaluation modes, the prediction command and
their error messages."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mpn_jax import checkpoints
from mpn_jax import errors
from mpn_jax.configs import branches as branches_config
from mpn_jax.configs import defaults
from mpn_jax.configs import prn as prn_config
from mpn_jax.evaluation import coco_io
from mpn_jax.evaluation import evaluators

from conftest import REPO

PRN_VAL = "annotations/person_keypoints_val2017_prn_val.json"


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def _config(**eval_fields):
  config = defaults.eval_config()
  config.update(eval_fields)
  return config


def test_prn_gt_center_from_the_command_line(coco_dir, tmp_path):
  out = tmp_path / "OUT.json"
  proc = _run(f"--model={tmp_path / 'wd'}", "--config.eval.mode=prn_gt",
              "--config.eval.assign=center",
              f"--config.eval.ann_file={coco_dir / PRN_VAL}", f"--config.eval.output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    stats = json.load(f)
  assert list(stats) == list(coco_io.STAT_NAMES)
  assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in stats.values()), stats
  # The non-learned centre rule groups most people right (~0.73-0.76 on this split) but not all.
  assert 0.6 < stats["AP"] < 0.9, stats
  assert "AP50" in proc.stdout  # the printed table
  # The results file holds ground-truth positions only: rescoring it reproduces the statistics.
  # Beside the chosen output, not in the model's eval/ folder.
  results_file = tmp_path / "OUT_results.json"
  assert not (tmp_path / "wd" / "eval").exists()
  rescored = coco_io.run_coco_eval(str(coco_dir / PRN_VAL), str(results_file),
                                      image_ids={r["image_id"] for r in json.load(
                                          open(results_file))})
  np.testing.assert_allclose(list(rescored.values()), list(stats.values()))


@pytest.mark.parametrize("field", ["output", "results_file"])
def test_an_output_over_a_file_evaluate_did_not_write_is_refused(coco_dir, tmp_path, field):
  ann = tmp_path / "val.json"
  ann.write_bytes((coco_dir / PRN_VAL).read_bytes())
  before = ann.read_bytes()
  config = _config(mode="prn_gt", assign="center", ann_file=str(ann), **{field: str(ann)})
  with pytest.raises(errors.ConfigError,
                     match=rf"--config.eval.{field}=.*would replace .*val\.json, which it did not"):
    evaluators.evaluate(str(tmp_path / "wd"), config)
  assert ann.read_bytes() == before
  # Its own earlier output is replaced by a rerun.
  config = _config(mode="prn_gt", assign="center", ann_file=str(ann),
                   output=str(tmp_path / "s.json"))
  for _ in range(2):
    evaluators.evaluate(str(tmp_path / "wd"), config)
  assert ann.read_bytes() == before


def test_missing_checkpoint_names_the_workdir_and_the_train_command(coco_dir, tmp_path):
  proc = _run(f"--model={tmp_path / 'empty'}", "--config.eval.mode=prn_gt",
              f"--config.eval.ann_file={coco_dir / PRN_VAL}")
  assert proc.returncode != 0
  assert str(tmp_path / "empty") in proc.stderr
  assert "python train.py --config=configs/prn.py" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_annotation_file_is_a_clear_error(tmp_path):
  missing = tmp_path / "nope.json"
  config = _config(mode="prn_gt", assign="center", ann_file=str(missing))
  with pytest.raises(FileNotFoundError, match=r"nope\.json does not exist.*config\.eval\.ann_file"):
    evaluators.evaluate(str(tmp_path), config)


def test_unknown_mode_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="config.eval.mode"):
    evaluators.evaluate(str(tmp_path), _config(mode="nonsense"))


def test_missing_branches_checkpoint_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="configs/branches.py"):
    checkpoints.stage_workdir(str(tmp_path / "b"), "branches")


# --- the whole pipeline on real images, with tiny randomly initialised networks ------------------


def _random_variables(model, shape):
  """Variables of `model` with random weights, built from jax.eval_shape (no XLA compilation of
  the init: much faster on a busy CPU). BatchNorm scales/variances are 1, biases/means 0."""
  import jax  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                               np.zeros(shape, np.float32), train=False))
  rng = np.random.default_rng(0)

  def make(path, leaf):
    name = str(path[-1].key)
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(make, abstract)


def _save_stage(workdir, model, config, shape):
  """Saves random variables of `model` the way training does (a TrainState checkpoint)."""
  import optax  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  variables = _random_variables(model, shape)
  st = state_lib.TrainState.create(variables["params"], variables.get("batch_stats", {}),
                                   optax.sgd(0.1))
  ckpt = checkpoints.StageCheckpoints(str(workdir))
  ckpt.save(st, config=config)
  ckpt.close()


@pytest.fixture(scope="module")
def tiny_stages(tmp_path_factory):
  """(branches workdir, prn workdir, PRN config, branches config) of tiny untrained networks; their
  parent folder is the model path."""
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("stages")
  bcfg = branches_config.get_config("smoke")
  bcfg.model = models.multiposenet_config("tiny")
  bcfg.input.size = 96
  # A tiny synthetic TFDS dataset (prepared only by the test that evaluates a TFDS split).
  bcfg.dataset.update(dict(name="mpn_synthetic", data_dir=str(root / "tfds"), image_size=64,
                           num_train=4, num_val=5))
  _save_stage(root / "branches", models.build_multiposenet(bcfg.model), bcfg, (1, 96, 96, 3))
  pcfg = prn_config.get_config("smoke")
  pcfg.model = models.prn_config("tiny")
  _save_stage(root / "prn", models.build_prn(pcfg.model), pcfg, (1, 56, 36, 17))
  return root / "branches", root / "prn", pcfg, bcfg


@pytest.fixture()
def image_set(coco_dir, tmp_path):
  """A COCO file of 3 real val images (linked, not copied) + 1 broken file, and its folder."""
  with open(coco_dir / "annotations" / "person_keypoints_val2017_sample.json") as f:
    ann = json.load(f)
  images = sorted(ann["images"], key=lambda i: i["id"])[:3]
  folder = tmp_path / "images"
  folder.mkdir()
  for im in images:
    os.symlink(coco_dir / "val2017" / im["file_name"], folder / im["file_name"])
  broken = dict(images[0], id=999999999, file_name="broken.jpg")
  (folder / "broken.jpg").write_bytes(b"not a jpeg")
  ids = {im["id"] for im in images}
  sub = dict(ann, images=images + [broken],
             annotations=[a for a in ann["annotations"] if a["image_id"] in ids])
  ann_file = tmp_path / "ann.json"
  ann_file.write_text(json.dumps(sub))
  return ann_file, folder, [im["id"] for im in images]


def _pipeline_config(tmp_path, ann_file, folder, **fields):
  config = defaults.eval_config("pipeline")
  config.update(dict(ann_file=str(ann_file), image_dir=str(folder), batch_size=4, pictures=2,
                     output=str(tmp_path / "stats.json")))
  config.update(fields)
  return config


def test_pipeline_on_real_images(tiny_stages, image_set, tmp_path, capsys):
  branches, _, _, _ = tiny_stages
  model = branches.parent
  ann_file, folder, ids = image_set
  config = _pipeline_config(tmp_path, ann_file, folder, picture_min_score=0.0)
  stats = evaluators.evaluate(str(model), config)
  printed = capsys.readouterr()
  assert list(stats) == list(coco_io.STAT_NAMES)
  assert all(0.0 <= v <= 1.0 for v in stats.values())
  assert json.load(open(tmp_path / "stats.json")) == stats
  assert "broken.jpg" in printed.err and "1 unreadable image(s) skipped" in printed.out
  assert "3 images evaluated" in printed.out
  results = json.load(open(tmp_path / "stats_results.json"))  # beside the chosen output
  assert {r["image_id"] for r in results} <= set(ids)
  for r in results:  # people in original pixels: inside (a margin around) their image
    assert len(r["keypoints"]) == 51 and 0.0 <= r["score"] <= 1.0
  pictures = sorted((tmp_path / "stats_pictures").glob("*.png"))
  assert [p.name for p in pictures] == [f"{i:012d}.png" for i in ids[:2]]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  info = {im["id"]: im for im in json.load(open(ann_file))["images"]}
  assert Image.open(pictures[0]).size == (info[ids[0]]["width"], info[ids[0]]["height"])


def test_pipeline_without_people_gives_no_results(tiny_stages, image_set, tmp_path):
  branches, _, _, _ = tiny_stages
  ann_file, folder, _ = image_set
  config = _pipeline_config(tmp_path, ann_file, folder, pictures=0,
                            results_file=str(tmp_path / "res.json"))
  # No box can pass the score threshold: no people at all.
  stats = evaluators.evaluate(str(branches.parent), config, inference={"score_threshold": 2.0})
  assert stats == {k: 0.0 for k in coco_io.STAT_NAMES}
  assert json.load(open(tmp_path / "res.json")) == []


def test_pipeline_with_the_annotated_boxes_gives_one_person_per_annotated_person(
    tiny_stages, image_set, tmp_path, capsys):
  branches, _, _, _ = tiny_stages
  ann_file, folder, ids = image_set
  config = _pipeline_config(tmp_path, ann_file, folder, pictures=0, boxes="ground_truth")
  # The detector is switched off (no box passes the threshold): every person comes from a given box.
  evaluators.evaluate(str(branches.parent), config, inference={"score_threshold": 2.0})
  assert "COCO keypoints, annotated people's boxes, 3 images" in capsys.readouterr().out
  anns = json.load(open(ann_file))["annotations"]
  want = {i: min(20, sum(1 for a in anns if a["image_id"] == i and not a["iscrowd"])) for i in ids}
  assert sum(want.values()) > 0
  results = json.load(open(tmp_path / "stats_results.json"))
  assert {i: sum(1 for r in results if r["image_id"] == i) for i in ids} == want


@pytest.mark.parametrize("fields,match", [
    (dict(boxes="gt"), "config.eval.boxes must be one of"),
    (dict(mode="detector", boxes="ground_truth"), "config.eval.boxes=ground_truth is for")])
def test_bad_boxes_field_is_a_clear_error(tmp_path, fields, match):
  with pytest.raises(ValueError, match=match):
    evaluators.evaluate(str(tmp_path), _config(**fields))


def test_pipeline_missing_branches_checkpoint(tiny_stages, image_set, tmp_path):
  _, prn, _, _ = tiny_stages
  ann_file, folder, _ = image_set
  model = tmp_path / "model"
  model.mkdir()
  os.symlink(prn, model / "prn")  # a model folder without branches/
  config = _pipeline_config(tmp_path, ann_file, folder)
  with pytest.raises(FileNotFoundError, match="no branches checkpoint.*configs/branches.py"):
    evaluators.evaluate(str(model), config)


def test_pipeline_on_the_tfds_split_of_the_branches_run(tiny_stages, tmp_path, capsys):
  branches, _, _, _ = tiny_stages
  config = defaults.eval_config("pipeline")
  config.update(dict(batch_size=4, pictures=1, picture_min_score=0.0,
                     pictures_dir=str(tmp_path / "pics"), output=str(tmp_path / "stats.json"),
                     results_file=str(tmp_path / "results.json")))
  stats = evaluators.evaluate(str(branches.parent), config)
  assert "5 images evaluated" in capsys.readouterr().out  # 2 batches of 4, the last padded
  assert list(stats) == list(coco_io.STAT_NAMES)
  # -1 is COCOeval's "no ground truth in this area range" (the synthetic people are all small).
  assert all(0.0 <= v <= 1.0 or v == -1.0 for v in stats.values())
  results = json.load(open(tmp_path / "results.json"))
  assert len({r["image_id"] for r in results}) <= 5
  # The synthetic 64x64 images are drawn on the letterboxed input, cropped to the image (96x96).
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pictures = list((tmp_path / "pics").glob("*.png"))
  assert len(pictures) == 1 and Image.open(pictures[0]).size == (96, 96)


def test_prn_gt_with_a_restored_prn(tiny_stages, coco_dir, tmp_path):
  _, prn, _, _ = tiny_stages
  config = defaults.eval_config("prn_gt")
  config.update(dict(ann_file=str(coco_dir / PRN_VAL), output=str(tmp_path / "o.json"),
                     results_file=str(tmp_path / "r.json")))
  stats = evaluators.evaluate(str(prn), config)  # a stage workdir: prn_gt needs only the PRN
  assert list(stats) == list(coco_io.STAT_NAMES)
  assert all(0.0 <= v <= 1.0 for v in stats.values())
  # Every person box of the images with a labelled keypoint is a person to fill.
  ann = json.load(open(coco_dir / PRN_VAL))
  labelled = {a["image_id"] for a in ann["annotations"] if a["num_keypoints"] > 0}
  boxes = sum(a["image_id"] in labelled for a in ann["annotations"])
  results = json.load(open(tmp_path / "r.json"))
  assert len(results) == boxes and {r["image_id"] for r in results} == labelled


def test_detector_mode_on_real_images(tiny_stages, image_set, tmp_path):
  branches, _, _, _ = tiny_stages
  ann_file, folder, ids = image_set
  config = defaults.eval_config("detector")
  config.update(dict(ann_file=str(ann_file), image_dir=str(folder), batch_size=4, pictures=1,
                     output=str(tmp_path / "det.json")))
  stats = evaluators.evaluate(str(branches), config)  # the branches workdir alone
  names = ([f"bbox/{k}" for k in coco_io.BBOX_STAT_NAMES] +
           [f"peaks_oracle/{k}" for k in coco_io.STAT_NAMES])
  assert list(stats) == names
  assert all(0.0 <= v <= 1.0 for v in stats.values())
  results = json.load(open(tmp_path / "det_results.json"))  # beside the chosen output
  assert results and all(len(r["bbox"]) == 4 for r in results)
  assert {r["image_id"] for r in results} <= set(ids)
  assert len(list((tmp_path / "det_pictures").glob("*.png"))) == 1


def test_predict_command_on_a_folder(tiny_stages, coco_dir, tmp_path):
  branches, prn, _, _ = tiny_stages
  folder = tmp_path / "photos"
  folder.mkdir()
  names = sorted(os.listdir(coco_dir / "val2017"))[:2]
  for n in names:
    os.symlink(coco_dir / "val2017" / n, folder / n)
  (folder / "zz_broken.png").write_bytes(b"\x89PNG broken")
  out = tmp_path / "out"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "predict.py", f"--model={branches.parent}", f"--input={folder}",
       f"--output={out}", "--min_score=0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "zz_broken.png" in proc.stderr and "1 unreadable image(s) skipped" in proc.stdout
  assert sorted(p.name for p in out.glob("*.png")) == [n.replace(".jpg", ".png") for n in names]
  predictions = json.load(open(out / "predictions.json"))
  assert {r["file_name"] for r in predictions} <= set(names)  # COCO keypoint results
  for r in predictions:
    assert isinstance(r["image_id"], int) and r["category_id"] == 1
    assert len(r["keypoints"]) == 51 and len(r["bbox"]) == 4


def test_pipeline_with_every_image_missing_writes_no_statistics(tiny_stages, image_set, tmp_path):
  from mpn_jax import errors  # pylint: disable=g-import-not-at-top
  branches, _, _, _ = tiny_stages
  ann_file, _, _ = image_set
  empty = tmp_path / "no_images"
  empty.mkdir()
  config = _pipeline_config(tmp_path, ann_file, empty, pictures=0,
                            results_file=str(tmp_path / "res.json"))
  with pytest.raises(errors.DataError, match="no image was evaluated"):
    evaluators.evaluate(str(branches.parent), config)
  assert not (tmp_path / "stats.json").exists() and not (tmp_path / "res.json").exists()
