"""The stage configs (mpn_jax/configs/branches.py, prn.py; configs/*.py re-export them): presets,
command-line overrides, typos refused, and loading them imports no TensorFlow, JAX or Flax."""

import json
import os
import re
import subprocess
import sys
import textwrap

from absl import flags
from ml_collections import config_flags
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {"branches": ("coco", "coco_detection", "coco_joint", "coco_samples", "synthetic", "smoke"),
           "prn": ("coco", "coco_small", "synthetic", "smoke")}
HEAVY = ("jax", "tensorflow", "tensorflow_datasets", "flax")


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
  """The checkout's configs/<stage>.py (a shim re-exporting the package's file)."""
  return os.path.join(REPO, "configs", f"{stage}.py")


def _package_path(stage):
  """mpn_jax/configs/<stage>.py: the real file, also usable as --config from an installed package."""
  return os.path.join(REPO, "mpn_jax", "configs", f"{stage}.py")


@pytest.mark.parametrize("stage,preset", [(s, p) for s, ps in PRESETS.items() for p in ps])
def test_presets_load_and_are_documented(stage, preset):
  config = _parse(f"--config={_path(stage)}:{preset}")
  assert config.stage == stage and config.preset == preset
  assert config.train.num_steps > 0 and config.train.trainable if stage == "branches" else True
  assert config.is_locked
  # The package's file gives the same config (--config=mpn_jax/configs/<stage>.py).
  packaged = _parse(f"--config={_package_path(stage)}:{preset}")
  assert packaged.is_locked and packaged.to_dict() == config.to_dict()
  with open(_package_path(stage)) as f:
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


def test_loading_the_configs_imports_no_tensorflow_jax_or_flax():
  """Fresh interpreter: the package's configs and the checkout's shims build every preset with
  plain data only (what `--config=...` costs before a command starts its real work)."""
  script = textwrap.dedent(f"""
      import importlib.util, json, sys
      import mpn_jax.configs.branches, mpn_jax.configs.prn
      out = {{}}
      for stage, module in (("branches", mpn_jax.configs.branches), ("prn", mpn_jax.configs.prn)):
        spec = importlib.util.spec_from_file_location("shim_" + stage, {os.path.join(REPO, "configs")!r}
                                                      + "/" + stage + ".py")
        shim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shim)
        for preset in module.PRESETS:
          config = module.get_config(preset)
          config.lock()
          assert config.is_locked
          assert shim.get_config(preset).to_dict() == config.to_dict(), (stage, preset)
          out[stage + ":" + preset] = config.stage
      print(json.dumps({{"built": out, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
      """)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["heavy"] == [], f"loading the configs imported {result['heavy']}"
  assert result["built"] == {f"{s}:{p}": s for s, ps in PRESETS.items() for p in ps}


def test_presets_match_the_modules_presets():
  from mpn_jax.configs import branches
  from mpn_jax.configs import prn
  assert branches.PRESETS == PRESETS["branches"] and prn.PRESETS == PRESETS["prn"]


def test_heavy_modules_use_the_plain_data_defaults():
  """pipeline.input_config, prn_samples.prn_data_config and models.*_config are the plain-data
  builders themselves (one definition); the values they share with other modules agree."""
  from mpn_jax import models
  from mpn_jax import prn_grid
  from mpn_jax.configs import defaults
  from mpn_jax.data import augment
  from mpn_jax.data import pipeline
  from mpn_jax.data import prn_samples
  from mpn_jax.evaluation import evaluators
  assert pipeline.input_config is defaults.input_config
  assert prn_samples.prn_data_config is defaults.prn_data_config
  assert models.multiposenet_config is defaults.multiposenet_config
  assert models.prn_config is defaults.prn_config
  assert prn_grid.DEFAULT_WIDEN == defaults.BOX_WIDEN
  assert defaults.prn_data_config().widen == prn_grid.DEFAULT_WIDEN
  # One field per setting: the PRN input's widening and sigma are the PRN run's data fields only.
  assert not {"box_widen", "prn_sigma"} & set(defaults.inference_config())
  # One builder per default block: the heavy modules define none of their own.
  for module, name in ((augment, "augment_config"), (evaluators, "eval_config")):
    assert not hasattr(module, name), f"{module.__name__}.{name} duplicates defaults.{name}"
  with pytest.raises(ValueError, match="size must be one of"):
    models.multiposenet_config("huge")


def test_prn_data_dir_follows_mpn_coco_dir(monkeypatch):
  from mpn_jax.configs import defaults
  from mpn_jax.configs import prn
  monkeypatch.setenv("MPN_COCO_DIR", "/elsewhere/coco")
  assert defaults.prn_data_config().data_dir == "/elsewhere/coco"
  assert prn.get_config("coco_small").data.data_dir == "/elsewhere/coco"
  monkeypatch.delenv("MPN_COCO_DIR")
  assert prn.get_config("smoke").data.data_dir == "../shared/data/coco"


def test_synthetic_presets_of_both_stages_name_the_same_dataset():
  from mpn_jax.configs import branches
  from mpn_jax.configs import prn
  b = branches.get_config("synthetic").dataset
  p = prn.get_config("synthetic").data.synthetic
  assert {k: b[k] for k in p} == p.to_dict()
