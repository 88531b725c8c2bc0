"""The benchmark harness (mpn_jax.benchmark): FLOP counting, timing loop, derived metrics, memory,
and a tiny end-to-end run. Nothing here is a timing assertion: the numbers depend on the machine."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpn_jax import benchmark
from mpn_jax import boxes
from mpn_jax import errors
from mpn_jax import models
from mpn_jax import parallel
from mpn_jax.training import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fixed_part(name, units, flops, times):
  p = benchmark.Part(name, lambda: None, units, "x", flops=flops)
  p.times = list(times)
  return p


@pytest.mark.parametrize("n", [32, 96])
def test_matmul_flops_are_two_n_cubed(n):
  a = jnp.ones((n, n), jnp.float32)
  part = benchmark.compile_part("mm", jax.jit(jnp.matmul), (a, a), 1, "matmul")
  assert part.flops == pytest.approx(2 * n**3, rel=1e-3)


def test_conv_flops_match_hand_count():
  # VALID 3x3 conv, 1 x 10 x 12 x 8 -> 1 x 8 x 10 x 16: 2 FLOPs per multiply-add.
  x, w = jnp.ones((1, 10, 12, 8)), jnp.ones((3, 3, 8, 16))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  part = benchmark.compile_part("conv", conv, (x, w), 1, "images")
  assert part.flops == pytest.approx(2 * 8 * 10 * 16 * 3 * 3 * 8, rel=1e-3)
  assert part.info["host_callbacks"] == 0


def test_host_callbacks_are_counted():
  def host_double(x):
    return jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

  x = jnp.ones((3,))
  with_cb = benchmark.compile_part("cb", jax.jit(lambda x: host_double(x) + 1), (x,), 1, "x")
  without = benchmark.compile_part("no_cb", jax.jit(lambda x: x * 2 + 1), (x,), 1, "x")
  assert with_cb.info["host_callbacks"] > 0 and without.info["host_callbacks"] == 0
  np.testing.assert_allclose(with_cb.call(), without.call())


def test_round_robin_warms_up_then_alternates():
  log = []
  parts = [benchmark.Part(n, (lambda n=n: log.append(n)), 1, "x") for n in "ab"]
  benchmark.run_round_robin(parts, repeats=3, warmup=2)
  assert log == ["a", "a", "b", "b"] + ["a", "b"] * 3
  assert [len(p.times) for p in parts] == [3, 3]
  assert all(t >= 0 for p in parts for t in p.times)


@pytest.mark.parametrize("donate", [True, False])
def test_stateful_part_feeds_its_state_back(donate):
  step = jax.jit(lambda s, inc: (s + inc, s.sum()), donate_argnums=(0,) if donate else ())
  part = benchmark.compile_part("count", step, (jnp.zeros((4,)), jnp.ones((4,))), 1, "steps",
                                stateful=True)
  outs = [float(part.call()) for _ in range(4)]
  assert outs == [0.0, 4.0, 8.0, 12.0]
  assert part.info["state_donated"] is donate


def test_summary_metrics_from_medians():
  parts = [
      _fixed_part("matmul_64", 1, 2e6, [1.0, 2.0, 9.0]),     # 1e6 FLOP/s
      _fixed_part("matmul_128", 1, 6e6, [2.0, 3.0, 4.0]),    # 2e6 FLOP/s: the peak
      _fixed_part("forward_bs2", 2, 4e6, [4.0, 4.0, 5.0]),   # 1e6 FLOP/s, 0.5 images/s
      _fixed_part("pipeline_bs2", 2, 4e6, [5.0, 6.0, 1.0]),  # median 5 s
      _fixed_part("prn_bs64", 64, 64e3, [0.064, 0.032, 0.128]),
      _fixed_part("train_branches", 2, 3e6, [8.0]),
      _fixed_part("train_prn", 8, 8e3, [0.5]),
  ]
  parts[3].info["host_callbacks"] = 0
  m = benchmark.summarize(parts)
  assert m["matmul_peak_flops_per_s"] == pytest.approx(2e6)
  assert m["matmul_peak_size"] == 128
  assert m["forward_images_per_s_bs2"] == pytest.approx(0.5)
  assert m["forward_flops_per_image"] == pytest.approx(2e6)
  assert m["forward_fraction_of_peak_bs2"] == pytest.approx(0.5)
  assert m["pipeline_images_per_s_bs2"] == pytest.approx(0.4)
  assert m["pipeline_over_forward_bs2"] == pytest.approx(1.25)
  assert m["prn_us_per_person"] == pytest.approx(1000.0)
  assert m["prn_flops_per_person"] == pytest.approx(1e3)
  assert m["prn_us_per_person_at_peak"] == pytest.approx(500.0)  # 1e3 FLOP at 2e6 FLOP/s
  assert m["train_branches_images_per_s"] == pytest.approx(0.25)
  assert m["train_branches_flops_per_image"] == pytest.approx(1.5e6)
  assert m["train_prn_people_per_s"] == pytest.approx(16.0)
  assert m["train_prn_batch"] == 8


def test_peak_memory_counts_what_the_process_touched():
  big = np.ones(2**26, np.float32)  # 256 MiB, written so it is resident
  used, source = benchmark.peak_memory()
  assert used >= big.nbytes
  if jax.default_backend() == "cpu":
    assert "RSS" in source
  del big


@pytest.mark.parametrize("field,value,flag", [
    ("parts", ("forward", "bogus"), "--parts"),
    ("precisions", ("fp16",), "--precision"),
    ("runtime", "tensorrt", "--runtime"),
    ("image_size", 100, "--image_size"),
    ("batch_sizes", (0,), "--batch_sizes"),
    ("parts", ("input",), "--input_coco_dir"),
])
def test_bad_settings_name_the_flag(field, value, flag):
  with pytest.raises(ValueError, match=flag):
    benchmark.Settings(**{field: value}).validate()


def test_synthetic_branches_batch_feeds_the_library_loss():
  # Shapes only (eval_shape: no compilation): the stage-one loss accepts the benchmark's batch.
  s = 64
  model = models.build_multiposenet(models.multiposenet_config("tiny"))
  anchors = boxes.generate_anchors((s, s))
  cfg = benchmark._stage_config("branches")
  loss_fn = steps.branches_loss_fn(model, anchors, cfg.loss)
  batch = benchmark.synthetic_branches_batch(2, s, max_boxes=6, max_people=3)
  assert batch["heatmaps"].shape == (2, 16, 16, 17) and batch["box_labels"].dtype == np.int32
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, s, s, 3))))
  loss, _ = jax.eval_shape(
      lambda v: loss_fn(v["params"], v.get("batch_stats", {}), batch, jax.random.key(1), True), v)
  assert loss.shape == ()


def test_tiny_end_to_end_run():
  settings = benchmark.Settings(
      parts=("peak", "forward", "pipeline", "prn", "train_prn"), precisions=("fp32",),
      image_size=64, batch_sizes=(1,), prn_batch=4, prn_train_batch=4, repeats=1, warmup=0,
      peak_sizes=(128,), model_size="tiny")
  lines = []
  out = benchmark.run(settings, log=lines.append)
  for key in ("forward_images_per_s_bs1", "pipeline_images_per_s_bs1", "forward_flops_per_image",
              "matmul_peak_flops_per_s", "prn_us_per_person", "train_prn_people_per_s",
              "peak_memory_bytes", "forward_fraction_of_peak_bs1", "pipeline_over_forward_bs1"):
    assert math.isfinite(out[key]) and out[key] > 0, key
  assert out["device"].startswith("cpu")
  assert out["pipeline_host_callbacks_bs1"] == 0
  # The stage-two step runs on every (simulated) device: the batch stays a multiple of them.
  assert out["train_prn_batch"] % jax.device_count() == 0
  assert out["results"]["float32"]["prn_batch"] == 4
  assert out["train_prn_state_donated"] is True  # the library's step donates the train state
  table = "\n".join(lines)
  for name in ("matmul_128", "forward_bs1", "pipeline_bs1", "prn_bs4", "train_prn"):
    assert name in table
  json.dumps(out)  # the JSON file is written from this dict


def test_command_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "mpn_jax.benchmark", "--quick", "--parts=peak,prn",
       f"--output={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads(out.read_text())
  assert data["prn_batch"] == 8 and data["prn_us_per_person"] > 0
  assert data["matmul_peak_size"] == 256
  assert "prn_bs8" in proc.stdout


def test_branches_loss_without_anchors_generates_them_per_batch_size():
  # anchors=None (the training loop: crops and full-size validation batches) gives the loss of
  # explicit anchors for each batch's size.
  model = models.build_multiposenet(models.multiposenet_config("tiny"))
  cfg = benchmark._stage_config("branches")
  v = jax.jit(lambda r: model.init(r, jnp.zeros((1, 64, 64, 3)), train=False))(jax.random.key(0))
  auto = steps.branches_loss_fn(model, None, cfg.loss)
  for s in (32, 64):
    batch = benchmark.synthetic_branches_batch(2, s, max_boxes=6, max_people=3, seed=s)
    fixed = steps.branches_loss_fn(model, boxes.generate_anchors((s, s)), cfg.loss)
    args = (v["params"], v.get("batch_stats", {}), batch, jax.random.key(1))
    # jitted: op-by-op dispatch of the whole loss takes half a minute
    got = jax.jit(lambda *a, f=auto: f(*a, False)[0])(*args)
    want = jax.jit(lambda *a, f=fixed: f(*a, False)[0])(*args)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_input_part_times_the_coco_recipe_on_real_images(coco_dir):
  settings = benchmark.Settings(parts=("input",), input_coco_dir=str(coco_dir), input_batches=2,
                                repeats=1, warmup=0)
  out = benchmark.run(settings, log=lambda *_: None)
  from mpn_jax.configs import branches  # pylint: disable=g-import-not-at-top
  assert out["input_batch"] == branches.get_config("coco").input.batch_size
  assert out["input_images_per_s"] > 0 and out["input_cores"] >= 1
  assert out["input_images_per_s_per_core"] == pytest.approx(
      out["input_images_per_s"] / out["input_cores"])
  assert out["input_image_dtype"] == "float32"
  assert len(out["timings"]["float32"]["input"]["times_s"]) == 2


def test_input_part_names_a_missing_annotation_file(tmp_path):
  settings = benchmark.Settings(parts=("input",), input_coco_dir=str(tmp_path), repeats=1, warmup=0)
  with pytest.raises(errors.MissingFileError, match="--input_coco_dir"):
    benchmark.run(settings, log=lambda *_: None)


def test_gpu_preset_settings():
  s = benchmark.gpu_preset(benchmark.Settings())
  assert s.precisions == ("fp32", "bf16") and s.batch_sizes == (1, 32) and s.train_batch == -1
  assert "input" not in s.parts and set(benchmark.DEFAULT_PARTS) <= set(s.parts)
  assert "input" in benchmark.gpu_preset(benchmark.Settings(input_coco_dir="/data/coco")).parts
  s.validate()
  kept = benchmark.gpu_preset(benchmark.Settings(batch_sizes=(4,)), keep={"batch_sizes"})
  assert kept.batch_sizes == (4,) and kept.train_batch == -1


def test_largest_train_batch_that_fits(monkeypatch):
  """train_batch=-1 halves the batch from 64 until a step runs (out-of-memory simulated)."""
  tried = []

  def fake(settings, dtype, mesh):
    tried.append(settings.train_batch)
    if settings.train_batch > 16:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    return benchmark.Part("train_branches", lambda: 0, settings.train_batch, "images")

  monkeypatch.setattr(benchmark, "_branches_train_part", fake)
  mesh = parallel.create_mesh()
  part = benchmark.branches_train_part(benchmark.Settings(train_batch=-1), "float32", mesh,
                                       log=lambda *_: None)
  assert part.units == 16 and tried == [64, 32, 16]
  with pytest.raises(ValueError):  # other errors are not taken for out-of-memory
    monkeypatch.setattr(benchmark, "_branches_train_part",
                        lambda *a: (_ for _ in ()).throw(ValueError("bad shape")))
    benchmark.branches_train_part(benchmark.Settings(train_batch=-1), "float32", mesh)


def test_benchmark_and_quickstart_flags_do_not_clash():
  """Both modules define absl flags at import; a test process imports both."""
  subprocess.run([sys.executable, "-c", "import mpn_jax.benchmark, mpn_jax.quickstart"],
                 check=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_peer_metrics_take_the_peers_fastest_variant():
  parts = [
      _fixed_part("forward_bs1", 1, 4e6, [0.5]),                        # 2 images/s
      _fixed_part("pipeline_bs1", 1, 4e6, [0.25]),                      # 4 images/s
      _fixed_part("prn_bs64", 64, 64e3, [0.032]),                       # 500 us/person
      _fixed_part("peer_forward_fp32_nchw_bs1", 1, 0, [1.0, 1.0, 3.0]),   # 1 image/s
      _fixed_part("peer_forward_bf16_channels_last_bs1", 1, 0, [0.5]),   # 2 images/s: the best
      _fixed_part("peer_prn_fp32_bs64", 64, 0, [0.128]),                 # 2000 us/person
      _fixed_part("peer_prn_bf16_bs64", 64, 0, [0.064]),                 # 1000: the best
  ]
  parts[1].info["host_callbacks"] = 0
  m = benchmark.summarize(parts)
  assert m["peer_forward_images_per_s_fp32_nchw_bs1"] == pytest.approx(1.0)
  assert m["peer_best_forward_images_per_s_bs1"] == pytest.approx(2.0)
  assert m["peer_best_forward_variant_bs1"] == "bf16_channels_last"
  assert m["pipeline_over_peer_best_bs1"] == pytest.approx(2.0)
  assert m["forward_over_peer_best_bs1"] == pytest.approx(1.0)
  assert m["peer_prn_us_per_person_fp32"] == pytest.approx(2000.0)
  assert m["peer_prn_best_us_per_person"] == pytest.approx(1000.0)
  assert m["peer_prn_best_precision"] == "bf16"
  assert m["prn_over_peer_best"] == pytest.approx(0.5)


def test_peer_without_torch_is_one_line_with_the_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  monkeypatch.delitem(sys.modules, "mpn_jax.peer", raising=False)
  settings = benchmark.Settings(parts=("peer",), model_size="tiny", image_size=64,
                                batch_sizes=(1,), prn_batch=2, repeats=1, warmup=0)
  with pytest.raises(errors.ConfigError, match=r'--parts=peer needs PyTorch.*"\.\[peer\]"'):
    benchmark.run(settings, log=lambda _: None)


def test_tiny_run_beside_the_peer():
  pytest.importorskip("torch")
  settings = benchmark.Settings(
      parts=("forward", "pipeline", "prn", "peer"), precisions=("fp32",), image_size=64,
      batch_sizes=(1, 2), prn_batch=4, repeats=1, warmup=0, model_size="tiny")
  lines = []
  out = benchmark.run(settings, log=lines.append)
  for b in (1, 2):
    best = out[f"peer_best_forward_images_per_s_bs{b}"]
    variants = [v for k, v in out.items() if k.startswith("peer_forward_images_per_s_")
                and k.endswith(f"_bs{b}")]
    assert len(variants) in (2, 4) and best == max(variants)  # fp32 (+ bf16) x 2 layouts
    assert out[f"pipeline_over_peer_best_bs{b}"] == pytest.approx(
        out[f"pipeline_images_per_s_bs{b}"] / best)
  assert out["prn_over_peer_best"] == pytest.approx(
      out["prn_us_per_person"] / out["peer_prn_best_us_per_person"])
  table = "\n".join(lines)
  assert "peer_forward_fp32_nchw_bs1" in table and "peer_prn_fp32_bs4" in table
  json.dumps(out)
