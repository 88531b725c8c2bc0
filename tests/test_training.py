"""Training loop: loss goes down, resume is exact, SIGTERM and NaN handling, freezing, init_from,
and `python train.py` end to end on both stages' smoke presets."""

import inspect
import itertools
import os
import re
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mpn_jax import checkpoints
from mpn_jax import parallel
from mpn_jax.training import loop
from mpn_jax.training import state as state_lib
from mpn_jax.training import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Toy(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: small, but with BatchNorm state like the real models."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(16, name="backbone")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    return nn.Dense(1, name="retina_head")(nn.relu(x))


def toy_loss_fn(model):
  def loss_fn(params, batch_stats, batch, rng, train):
    out, new_stats = steps._apply(model, params, batch_stats, batch["x"], rng, train)
    loss = jnp.mean(jnp.square(out - batch["y"]))
    return loss, (new_stats, {"loss": loss})
  return loss_fn


def toy_batch(step, batch_size=8, seed=0):
  """Batch number `step` of a fixed stream: y = a known linear function of x."""
  x = np.random.default_rng([seed, step]).normal(size=(batch_size, 4)).astype(np.float32)
  return {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32))[:, None]}


def toy_task(batch_size=8, nan_at=None, sigterm_at=None, signum=signal.SIGTERM):
  model = Toy()

  def train_iterator(start):
    for s in itertools.count(start):
      batch = toy_batch(s, batch_size)
      if s == nan_at:
        batch["x"][0, 0] = np.nan
      if s == sigterm_at:
        os.kill(os.getpid(), signum)
      yield batch

  return loop.Task(init_variables=lambda rng: model.init(rng, jnp.zeros((1, 4))),
                   loss_fn=toy_loss_fn(model), train_iterator=train_iterator,
                   batch_size=batch_size)


def toy_config(**train):
  c = ml_collections.ConfigDict(dict(
      seed=0, init_from="",
      train=dict(optimizer="adam", learning_rate=0.03, weight_decay=0.0, schedule="constant",
                 decay_fractions=(0.5,), decay_factor=0.1, warmup_steps=0, grad_clip_norm=0.0,
                 num_steps=12, log_every_steps=3, checkpoint_every_steps=4, keep_checkpoints=2,
                 eval_every_steps=0, best_metric="", best_mode="min")))
  c.train.update(train)
  return c


def _params(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def test_loss_goes_down(tmp_path):
  r = loop.run(toy_config(num_steps=60, log_every_steps=20, checkpoint_every_steps=60),
               tmp_path, toy_task())
  losses = [r.losses[s] for s in sorted(r.losses)]
  assert len(losses) == 60
  assert np.mean(losses[-10:]) < 0.35 * np.mean(losses[:10])
  assert int(r.state.step) == 60
  # TensorBoard events were written next to the checkpoints.
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))


def test_resume_after_sigterm_matches_uninterrupted_run(tmp_path):
  full = loop.run(toy_config(), tmp_path / "full", toy_task())
  # SIGTERM while batch 6 is being prepared: step 7 finishes, is checkpointed, the run returns.
  first = loop.run(toy_config(), tmp_path / "resumed", toy_task(sigterm_at=6))
  assert first.stopped_early and int(first.state.step) == 7
  assert 7 in checkpoints.StageCheckpoints(tmp_path / "resumed").all_steps()
  second = loop.run(toy_config(), tmp_path / "resumed", toy_task())
  assert not second.stopped_early
  assert sorted(second.losses) == list(range(8, 13))  # continued after step 7
  for s in range(8, 13):
    np.testing.assert_allclose(second.losses[s], full.losses[s], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               _params(second.state.params), _params(full.state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               _params(second.state.batch_stats), _params(full.state.batch_stats))


def test_first_ctrl_c_checkpoints_and_stops_like_sigterm(tmp_path):
  # Python's default handler, or SIG_IGN where the tests run in the background (nohup, `&`).
  before = signal.getsignal(signal.SIGINT)
  r = loop.run(toy_config(), tmp_path, toy_task(sigterm_at=6, signum=signal.SIGINT))
  assert r.stopped_early and int(r.state.step) == 7
  assert 7 in checkpoints.StageCheckpoints(tmp_path).all_steps()
  # The handler is the previous one again once training returns.
  assert signal.getsignal(signal.SIGINT) is before


def test_failed_evaluation_saves_the_step_before_the_error(tmp_path):
  task = toy_task()

  def evaluate(state, step):
    raise RuntimeError(f"validation file broke at step {step}")

  task.evaluate = evaluate
  with pytest.raises(RuntimeError, match="broke at step 6"):
    loop.run(toy_config(eval_every_steps=6, checkpoint_every_steps=4), tmp_path, task)
  # Steps 5 and 6 are not lost to the evaluation's error: step 6 is on disk and resumable.
  assert checkpoints.StageCheckpoints(tmp_path).latest_step() == 6


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path):
  reference = loop.run(toy_config(num_steps=8), tmp_path / "reference", toy_task())
  with pytest.raises(loop.NonFiniteLossError, match=r"step 10 .*last good checkpoint is step 8"):
    loop.run(toy_config(), tmp_path / "nan", toy_task(nan_at=9))  # batch 9 -> step 10
  ckpt = checkpoints.StageCheckpoints(tmp_path / "nan")
  assert ckpt.latest_step() == 8
  params, batch_stats, _ = checkpoints.restore_variables(tmp_path / "nan")
  for got, want in [(params, reference.state.params), (batch_stats, reference.state.batch_stats)]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, _params(want))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_checkpoints_keep_last_n_and_best(tmp_path):
  evals = iter([{"val_loss": v} for v in (5.0, 1.0, 3.0, 4.0, 6.0)])
  task = toy_task()
  task.evaluate = lambda state, step: next(evals)
  cfg = toy_config(num_steps=10, eval_every_steps=2, checkpoint_every_steps=2, keep_checkpoints=2,
                   best_metric="val_loss", best_mode="min")
  r = loop.run(cfg, tmp_path, task)
  assert sorted(r.eval_metrics) == [2, 4, 6, 8, 10]
  ckpt = checkpoints.StageCheckpoints(tmp_path, best_metric="val_loss")
  assert sorted(ckpt.all_steps()) == [4, 8, 10]  # last two, plus the best (val_loss 1.0 at 4)


def test_restore_variables_from_workdir_step_and_config(tmp_path):
  r = loop.run(toy_config(num_steps=4), tmp_path, toy_task())
  for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "4"):
    params, batch_stats, _ = checkpoints.restore_variables(path)
    np.testing.assert_allclose(params["backbone"]["kernel"],
                               _params(r.state.params)["backbone"]["kernel"])
    assert "bn" in batch_stats
  _, _, cfg = checkpoints.restore_variables(tmp_path)
  assert cfg["train"]["num_steps"] == 4
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoints.restore_variables(tmp_path / "missing")


def test_init_from_copies_matching_subtrees_and_lists_mismatches(tmp_path):
  import orbax.checkpoint as ocp
  mesh = parallel.create_mesh()
  task = toy_task()
  tx, _ = state_lib.make_optimizer(toy_config().train)
  state = loop.create_state(task, tx, 0, mesh)
  kernel = np.full((4, 16), 0.5, np.float32)
  good = tmp_path / "backbone_only"
  with ocp.StandardCheckpointer() as ckptr:  # closing waits for the (async) writes
    ckptr.save(good, {"params": {"backbone": {"kernel": kernel}}, "batch_stats": {}})
    ckptr.save(tmp_path / "bad", {"params": {"backbone": {"kernel": np.zeros((3, 16), np.float32)},
                                             "extra": {"w": np.zeros(2, np.float32)}}})
  new = state_lib.init_from(state, good, mesh)
  np.testing.assert_array_equal(new.params["backbone"]["kernel"], kernel)
  np.testing.assert_array_equal(new.params["retina_head"]["kernel"],  # untouched
                                state.params["retina_head"]["kernel"])
  with pytest.raises(ValueError) as e:
    state_lib.init_from(state, tmp_path / "bad", mesh)
  assert "backbone/kernel: checkpoint (3, 16) vs model (4, 16)" in str(e.value)
  assert "extra/w: not in the model" in str(e.value)
  # The loop uses init_from only when the workdir has no checkpoint of its own.
  cfg = toy_config(num_steps=1, learning_rate=0.0)
  cfg.init_from = str(good)
  r = loop.run(cfg, tmp_path / "run", toy_task())
  np.testing.assert_allclose(r.state.params["backbone"]["kernel"], kernel)


@pytest.mark.parametrize("trainable,changed", [
    ("all", {"backbone", "retina_head", "detection_fpn"}),
    ("detection", {"retina_head", "detection_fpn"}),
    ("keypoints", {"backbone"})])
def test_trainable_freezes_the_rest(trainable, changed):
  params = {"backbone": {"w": jnp.ones(3)}, "retina_head": {"w": jnp.ones(2)},
            "detection_fpn": {"w": jnp.ones(2)}}
  stats = {"backbone": {"mean": jnp.zeros(3)}, "retina_head": {"mean": jnp.zeros(2)}}
  frozen = state_lib.frozen_fn(trainable)
  tx, _ = state_lib.make_optimizer(toy_config(optimizer="sgd").train, frozen)
  st = state_lib.TrainState.create(params, stats, tx, frozen_stats=frozen)
  grads = jax.tree.map(jnp.ones_like, params)
  new_stats = jax.tree.map(lambda x: x + 1, stats)
  st = st.apply_gradients(grads, new_stats)
  for name in params:
    moved = not np.allclose(st.params[name]["w"], params[name]["w"])
    assert moved == (name in changed), (name, trainable)
  for name in stats:
    moved = not np.allclose(st.batch_stats[name]["mean"], stats[name]["mean"])
    assert moved == (frozen is None or not frozen((name,))), (name, trainable)


def test_schedules():
  cfg = toy_config(schedule="piecewise", num_steps=100, decay_fractions=(0.5, 0.8),
                   learning_rate=1.0, warmup_steps=0).train
  sched = state_lib.learning_rate_schedule(cfg)
  assert [float(sched(s)) for s in (0, 49, 50, 79, 80, 99)] == pytest.approx(
      [1, 1, 0.1, 0.1, 0.01, 0.01])
  cfg.schedule, cfg.warmup_steps = "cosine", 10
  sched = state_lib.learning_rate_schedule(cfg)
  assert float(sched(0)) == 0.0 and float(sched(10)) == pytest.approx(1.0)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-6)
  cfg.warmup_steps = 0  # optax's own warmup-cosine schedule, without its zero-warmup notice
  steps = np.arange(0, 105)
  want = optax.warmup_cosine_decay_schedule(0.0, 1.0, 0, 100, end_value=0.0)
  np.testing.assert_array_equal(jax.vmap(state_lib.learning_rate_schedule(cfg))(steps),
                                jax.vmap(want)(steps))
  cfg.schedule = "bogus"
  with pytest.raises(ValueError, match="config.train.schedule"):
    state_lib.learning_rate_schedule(cfg)


def test_batch_size_must_divide_over_devices(tmp_path):
  with pytest.raises(ValueError, match=r"batch_size=6 must be divisible by the number of devices"):
    loop.run(toy_config(num_steps=1), tmp_path, toy_task(batch_size=6))


def test_missing_coco_dataset_is_a_clear_error(tmp_path):
  sys.path.insert(0, REPO)
  from configs import branches  # pylint: disable=g-import-not-at-top
  cfg = branches.get_config("coco")
  cfg.model.backbone.frozen_bn = False  # from scratch is allowed then (no init_from needed)
  cfg.dataset.coco_dir = str(tmp_path / "no_coco")
  cfg.dataset.data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError) as e:
    loop.train_and_evaluate(cfg, str(tmp_path / "work"))
  msg = str(e.value)
  assert str(tmp_path / "no_coco" / "annotations") in msg and "--config.dataset.coco_dir" in msg


def test_missing_prn_annotations_are_a_clear_error(tmp_path):
  config = _prn_smoke_config()
  config.data.data_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError) as e:
    loop.train_and_evaluate(config, str(tmp_path / "work"))
  assert str(tmp_path / "nowhere") in str(e.value) and "--config.data.data_dir" in str(e.value)


def test_unknown_stage_is_a_clear_error(tmp_path):
  config = _prn_smoke_config()
  config.stage = "branch"
  with pytest.raises(ValueError, match="config.stage='branch'"):
    loop.train_and_evaluate(config, str(tmp_path))


def _prn_smoke_config():
  sys.path.insert(0, REPO)
  from configs import prn  # pylint: disable=g-import-not-at-top
  config = prn.get_config("smoke")
  config.data.data_dir = os.path.join(REPO, config.data.data_dir)
  return config


def test_prn_steps_lower_the_loss(tmp_path, coco_dir):
  del coco_dir  # the smoke preset reads the prn_train / prn_val files in ../shared
  from mpn_jax.data import prn_samples  # pylint: disable=g-import-not-at-top
  config = _prn_smoke_config()
  config.train.num_steps, config.train.learning_rate = 12, 1e-2
  config.train.checkpoint_every_steps = 12
  config.model.dropout_rate = 0.0  # a smooth descent on one batch
  task = loop.prn_task(config, parallel.create_mesh())
  batch = next(prn_samples.make_prn_iterator(config))
  task.train_iterator = lambda start: itertools.repeat(batch)  # fit one batch
  r = loop.run(config, tmp_path, task)
  assert np.mean([r.losses[s] for s in (10, 11, 12)]) < r.losses[1] - 0.2
  assert "val_loss" in r.eval_metrics[12]  # evaluation at the end on the prn_val file


def _logged_losses(stderr):
  """{step: loss} from the loop's 'step N/M: loss X' log lines."""
  return {int(m.group(1)): float(m.group(2))
          for m in re.finditer(r"step (\d+)/\d+: loss ([-\d.eE+naif]+)", stderr)}


def _train_cli(config, workdir, *overrides):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}", *overrides]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_train_cli_prn_smoke(tmp_path, coco_dir):
  del coco_dir  # the smoke preset reads the prn_train / prn_val files in ../shared
  proc = _train_cli("configs/prn.py:smoke", tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(checkpoints.StageCheckpoints(tmp_path).all_steps())[-1] == 3
  params, _, cfg = checkpoints.restore_variables(tmp_path)
  assert cfg["stage"] == "prn" and params
  # A misspelt override is refused before anything runs.
  proc = _train_cli("configs/prn.py:smoke", tmp_path / "typo", "--config.train.learnin_rate=1")
  assert proc.returncode != 0 and "learnin_rate" in proc.stderr


@pytest.mark.slow
def test_train_cli_branches_smoke(tmp_path):
  proc = _train_cli("configs/branches.py:smoke", tmp_path / "work",
                    f"--config.dataset.data_dir={tmp_path / 'tfds'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = _logged_losses(proc.stderr)
  assert sorted(losses) == [1, 2, 3] and losses[3] < losses[1]  # a few steps lower the loss
  params, batch_stats, cfg = checkpoints.restore_variables(tmp_path / "work")
  assert cfg["stage"] == "branches"
  assert {"backbone", "keypoint_head", "retina_head"} <= set(params) and batch_stats


def test_mixed_precision_bf16_compute_float32_state_losses_match():
  """config.model.dtype='bfloat16' (both stages' switch): compute in bfloat16, parameters and
  optimizer state stay float32, and 5 stage-one steps' losses match float32's within 3% (bf16 has
  8 bits of mantissa; 0.12-0.39% measured on the tiny model, CPU)."""
  from mpn_jax import benchmark  # pylint: disable=g-import-not-at-top
  from mpn_jax import boxes  # pylint: disable=g-import-not-at-top
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  from mpn_jax.configs import branches as branches_config  # pylint: disable=g-import-not-at-top
  config = branches_config.get_config("smoke")
  config.train.warmup_steps = 0
  config.train.learning_rate = 1e-3
  mesh = parallel.create_mesh()
  s, b = 64, parallel.create_mesh().size
  batch = parallel.shard_batch(benchmark.synthetic_branches_batch(b, s, 6, 3), mesh)
  losses, leaves = {}, {}
  for dtype in ("float32", "bfloat16"):
    mcfg = models.multiposenet_config("tiny")
    mcfg.keypoint_head.output_init = "fan_in"  # non-zero outputs: the loss depends on the body
    mcfg.dtype = dtype
    model = models.build_multiposenet(mcfg)
    loss_fn = steps.branches_loss_fn(model, boxes.generate_anchors((s, s)), config.loss)
    tx, schedule = state_lib.make_optimizer(config.train, state_lib.frozen_fn("all"))
    v = jax.jit(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)), train=False))(  # noqa: B023
        jax.random.key(0))
    state = state_lib.TrainState.create(v["params"], v.get("batch_stats", {}), tx,
                                        state_lib.frozen_fn("all"))
    state = jax.device_put(state, parallel.replicated_sharding(mesh))
    step = steps.make_train_step(loss_fn, mesh, schedule)
    args = (batch, jax.random.key(1)) if len(inspect.signature(step).parameters) == 3 else (batch,)
    losses[dtype] = []
    for _ in range(5):
      state, metrics = step(state, *args)
      losses[dtype].append(float(metrics["loss"]))
    leaves[dtype] = {str(x.dtype) for x in jax.tree.leaves((state.params, state.opt_state))
                     if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)}
  f32, bf16 = np.array(losses["float32"]), np.array(losses["bfloat16"])
  assert leaves["bfloat16"] == {"float32"}, leaves
  rel = np.abs(bf16 - f32) / np.abs(f32)
  assert rel.max() < 3e-2, (f32, bf16)
  assert rel.max() > 0, "bfloat16 compute changed nothing: the switch is not applied"
  assert f32[-1] < f32[0] and bf16[-1] < bf16[0]  # both learn
