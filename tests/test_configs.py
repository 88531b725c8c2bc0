"""configs/branches.py and configs/prn.py: presets, command-line overrides, typos refused."""

import os
import re

from absl import flags
from ml_collections import config_flags
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {"branches": ("coco", "coco_detection", "coco_joint", "coco_samples", "synthetic", "smoke"),
           "prn": ("coco", "coco_small", "synthetic", "smoke")}


def _parse(*argv):
  """Parses argv the way train.py does (config_flags with lock_config=True)."""
  fv = flags.FlagValues()
  argv = ["train.py", *argv]
  # sys_argv: the override flags (--config.x.y) are defined from the command line being parsed.
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def _path(stage):
  return os.path.join(REPO, "configs", f"{stage}.py")


@pytest.mark.parametrize("stage,preset", [(s, p) for s, ps in PRESETS.items() for p in ps])
def test_presets_load_and_are_documented(stage, preset):
  config = _parse(f"--config={_path(stage)}:{preset}")
  assert config.stage == stage and config.preset == preset
  assert config.train.num_steps > 0 and config.train.trainable if stage == "branches" else True
  with open(_path(stage)) as f:
    doc = f.read().split('"""')[1]
  # The module docstring names the preset and shows the command that runs the stage.
  assert preset in doc
  assert re.search(rf"python train.py --config=configs/{stage}.py\S* --workdir=", doc)


def test_default_preset_is_the_paper_recipe():
  b = _parse(f"--config={_path('branches')}")
  assert b.preset == "coco" and b.dataset.name == "coco_keypoints" and b.input.size == 480
  assert b.train.optimizer == "adam" and b.train.learning_rate == 1e-4
  assert (b.loss.focal_alpha, b.loss.focal_gamma) == (0.25, 2.0)
  assert b.model.backbone.depth in (50, 101)
  # The paper's two phases: keypoints first (the detection loss is not trained), then detection.
  assert b.train.trainable == "keypoints" and b.model.backbone.frozen_bn
  d = _parse(f"--config={_path('branches')}:coco_detection")
  assert d.train.trainable == "detection" and d.train.learning_rate == 1e-5
  # Only images with people by default; 200k steps of batch 24 over train2017's 64115 images
  # with a person are the ~75 epochs the comment names.
  assert b.dataset.keep_empty == 0.0
  assert round(b.train.num_steps * b.input.batch_size / 64115) == 75
  p = _parse(f"--config={_path('prn')}")
  assert p.preset == "coco" and p.model.dropout_rate == 0.5
  assert any("train2017" in f for f in p.data.train_files)


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def test_prn_coco_preset_is_the_coco_small_recipe_on_other_data():
  coco = _flat(_parse(f"--config={_path('prn')}").to_dict())
  small = _flat(_parse(f"--config={_path('prn')}:coco_small").to_dict())
  differ = {k for k in coco if coco[k] != small[k]}
  # Data, its step counts, and what evaluate.py runs by default (the whole pipeline on images).
  assert differ <= {"preset", "data.data_dir", "data.train_files", "data.val_file",
                    "train.num_steps", "train.log_every_steps", "train.checkpoint_every_steps",
                    "train.eval_every_steps", "eval.mode"}, differ
  assert {"model.hidden_sizes", "inference.assign_method"}.isdisjoint(differ)


@pytest.mark.parametrize("stage", ["branches", "prn"])
def test_smoke_presets_are_small(stage):
  c = _parse(f"--config={_path(stage)}:smoke")
  assert c.train.num_steps <= 5
  bs = c.input.batch_size if stage == "branches" else c.data.batch_size
  assert bs % 4 == 0  # the tests' 4 simulated devices
  if stage == "branches":
    assert c.input.size <= 64 and c.dataset.name == "mpn_synthetic"
    assert c.dataset.image_size == c.input.size


def test_synthetic_branches_matches_its_dataset():
  c = _parse(f"--config={_path('branches')}:synthetic")
  assert c.dataset.name == "mpn_synthetic" and c.dataset.image_size == c.input.size == 128


def test_command_line_overrides_nested_fields():
  c = _parse(f"--config={_path('branches')}:smoke", "--config.train.learning_rate=0.5",
             "--config.model.backbone.width=8", "--config.train.trainable=detection",
             "--config.init_from=/tmp/x", "--config.loss.smooth_l1_beta=0.1111")
  assert c.train.learning_rate == 0.5 and c.model.backbone.width == 8
  assert c.train.trainable == "detection" and c.init_from == "/tmp/x"
  assert c.loss.smooth_l1_beta == pytest.approx(0.1111)
  c = _parse(f"--config={_path('prn')}:smoke", "--config.data.batch_size=16",
             "--config.train.prn_gt_ap=true")
  assert c.data.batch_size == 16 and c.train.prn_gt_ap is True


@pytest.mark.parametrize("stage,typo,wrong,right", [
    ("branches", "--config.train.learnin_rate=1", "learnin_rate", "learning_rate"),
    ("prn", "--config.dat.batch_size=4", "dat", "data"),
    ("branches", "--config.model.backbone.widht=8", "widht", "width")])
def test_misspelt_field_is_an_error(stage, typo, wrong, right):
  with pytest.raises((KeyError, AttributeError, flags.Error)) as e:
    _parse(f"--config={_path(stage)}:smoke", typo)
  assert wrong in str(e.value) and f'Did you mean "{right}"' in str(e.value)


def test_locked_config_refuses_new_fields_in_code():
  c = _parse(f"--config={_path('prn')}:smoke")
  with pytest.raises(AttributeError, match="learnin_rate"):
    c.train.learnin_rate = 1.0


def test_wrong_type_is_an_error():
  with pytest.raises(Exception, match="num_steps|int"):
    _parse(f"--config={_path('prn')}:smoke", "--config.train.num_steps=many")


@pytest.mark.parametrize("stage", ["branches", "prn"])
def test_unknown_preset_is_a_clear_error(stage):
  with pytest.raises(Exception, match="unknown preset 'cocoa'"):
    _parse(f"--config={_path(stage)}:cocoa")
