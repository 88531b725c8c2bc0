"""mpn_jax.inference.runtimes: the pipeline with the network and the PRN in ONNX Runtime / OpenVINO
(CPU serving) against the one jitted JAX function, on the tiny model.

The staged pipeline (jitted JAX around an outside network and PRN) is checked in every install by
plugging the JAX network and PRN into it; ONNX Runtime and OpenVINO need the [export] extra
(skipped with the reason where it is missing). Tolerances (tiny random model, CPU): staged JAX =
fused JAX within 1e-3 px; ONNX Runtime and OpenVINO fp32 within 1e-2 px of JAX fp32 (network
outputs agree to about 1e-6; keypoints move through sub-pixel peak refinement).
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mpn_jax import Predictor
from mpn_jax import errors
from mpn_jax import models
from mpn_jax.configs import defaults
from mpn_jax.inference import pipeline
from mpn_jax.inference import predictor as predictor_lib
from mpn_jax.inference import runtimes

from conftest import REPO
from test_evaluate_cli import tiny_stages  # noqa: F401  pylint: disable=unused-import

HAVE_ORT = all(importlib.util.find_spec(m) for m in ("onnx", "jax2onnx", "onnxruntime"))
HAVE_OPENVINO = all(importlib.util.find_spec(m) for m in ("onnx", "jax2onnx", "openvino"))
NO_EXTRA = 'the export extra is not installed (pip install -e ".[export]")'
PX_ATOL = 1e-2


@pytest.fixture(scope="module")
def model(tiny_stages):  # noqa: F811
  return str(tiny_stages[0].parent)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(3)
  return [rng.integers(0, 256, (70, 96, 3), np.uint8), rng.integers(0, 256, (96, 50, 3), np.uint8),
          rng.integers(0, 256, (96, 96, 3), np.uint8)]


@pytest.fixture(scope="module")
def reference(model, images):
  return Predictor.load(model, batch_size=4)(images)


def _close(got, want, atol):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g["scores"].shape == w["scores"].shape
    for k in ("keypoints", "boxes", "scores"):
      np.testing.assert_allclose(g[k], w[k], rtol=0, atol=atol, err_msg=k)


@pytest.mark.parametrize("tta", [dict(), dict(flip=True, scales=(1.0, 1.4))], ids=["plain", "tta"])
def test_staged_pipeline_equals_the_fused_one(model, images, tta):
  """Jitted TTA inputs -> network -> jitted peaks/NMS/PRN inputs -> PRN -> jitted assignment gives
  the one-function pipeline's people (the JAX network and PRN plugged in)."""
  bvars, bcfg = predictor_lib.restore(model, "branches")
  pvars, pcfg = predictor_lib.restore(model, "prn")
  icfg = defaults.inference_config()
  icfg.update(tta)
  size = int(bcfg.input.size)
  net, prn = models.build_multiposenet(bcfg.model), models.build_prn(pcfg.model)
  kw = predictor_lib.prn_input(pcfg)
  fused = pipeline.make_predict_fn(net, prn, icfg, **kw)
  net_fn = jax.jit(runtimes.network_fn(net, bvars))
  prn_fn = jax.jit(runtimes.prn_fn(prn, pvars))
  staged = runtimes.make_staged_fn(
      lambda x: dict(zip(runtimes.NETWORK_OUTPUTS, map(np.asarray, net_fn(x)))),
      lambda x: np.asarray(prn_fn(x)), icfg, (size, size), **kw)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, size, size, 3)).astype(np.float32)
  scales = np.asarray([0.5, 1.0, 1.5], np.float32)
  want = fused(bvars, pvars, x, scales)
  got = staged(x, scales)
  assert int(np.sum(want["valid"])) > 0
  for k in ("valid", "keypoints", "boxes", "scores"):
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=0, atol=1e-3,
                               err_msg=k)


def test_jax_precisions(model, images, reference):
  _close(Predictor.load(model, batch_size=4, precision="fp32")(images), reference, 0)
  bf16 = Predictor.load(model, batch_size=4, precision="bf16")
  assert bf16.inference.precision == "bf16"
  assert [p["scores"].shape for p in bf16(images)] == [p["scores"].shape for p in reference]


@pytest.mark.skipif(not HAVE_ORT, reason=NO_EXTRA)
def test_onnxruntime_fp32_matches_jax(model, images, reference):
  _close(Predictor.load(model, batch_size=4, runtime="onnxruntime")(images), reference, PX_ATOL)


@pytest.mark.skipif(not HAVE_OPENVINO, reason=NO_EXTRA + " (openvino)")
def test_openvino_fp32_matches_jax(model, images, reference):
  _close(Predictor.load(model, batch_size=4, runtime="openvino", precision="fp32")(images),
         reference, PX_ATOL)


@pytest.mark.skipif(not HAVE_OPENVINO, reason=NO_EXTRA + " (openvino)")
def test_openvino_bf16_network_is_close(model):
  """bf16 where the CPU has it (else the one-line refusal): network outputs within bf16's
  precision of fp32 (8 bits of mantissa: about 1e-2 relative)."""
  bvars, bcfg = predictor_lib.restore(model, "branches")
  size = int(bcfg.input.size)
  net = models.build_multiposenet(bcfg.model)
  if not runtimes.openvino_has_bf16():
    with pytest.raises(errors.ConfigError, match="no bfloat16"):
      runtimes.check("openvino", "bf16")
    return
  x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
  want = jax.jit(runtimes.network_fn(net, bvars))(x)
  got = runtimes.OnnxNetwork(bcfg.model, bvars, "openvino", "bf16")(x)
  for k, w in zip(runtimes.NETWORK_OUTPUTS, want):
    w = np.asarray(w)
    err = np.abs(got[k] - w).max() / max(np.abs(w).max(), 1e-6)
    assert err < 5e-2, (k, err)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bf16_network_cut_reassembles_the_outputs(monkeypatch, dtype):
  """At bf16 the runtime runs the network up to the output layers in bfloat16 and the output
  layers in a second graph in float32: with both graphs run by JAX itself (any CPU), the outputs
  are the whole network's, level by level and head by head (a swapped or reordered feature changes
  them); the first graph's outputs are float32 also for a run trained in bfloat16."""
  cfg = models.multiposenet_config("tiny")
  cfg.dtype = dtype
  net = models.build_multiposenet(cfg)
  x = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype(np.float32)
  bvars = jax.jit(lambda r: net.init(r, x[:1], train=False))(jax.random.key(3))
  bvars = jax.tree.map(lambda v: v + 0.01 * np.random.default_rng(4).standard_normal(v.shape)
                       .astype(v.dtype), bvars)  # non-zero output layers
  calls = []

  class JaxSession:  # stands in for OpenVINO: runs the graph's function itself
    def __init__(self, fn, precision, share_outputs=False):
      self.fn, self.precision = jax.jit(fn), precision
      del share_outputs

    def __call__(self, *inputs):
      out = self.fn(*inputs)
      calls.append((self.precision, len(inputs), [o.dtype for o in out]))
      return tuple(np.asarray(o) for o in out)

  monkeypatch.setattr(runtimes, "to_onnx", lambda fn, *a, **k: (fn, {}))
  monkeypatch.setitem(runtimes.SESSIONS, "openvino", JaxSession)
  got = runtimes.OnnxNetwork(cfg, bvars, "openvino", "bf16")(x)
  want = jax.jit(runtimes.network_fn(net, bvars))(x)
  f32 = np.dtype(np.float32)
  assert calls == [("bf16", 1, [f32] * 11), ("fp32", 11, [f32] * 3)], calls
  for k, w in zip(runtimes.NETWORK_OUTPUTS, want):
    assert got[k].dtype == np.float32 and got[k].shape == w.shape, k
    np.testing.assert_allclose(got[k], np.asarray(w), rtol=1e-5, atol=1e-5 * float(np.abs(w).max()))


@pytest.mark.parametrize("runtime,precision,match", [
    ("tensorrt", "fp32", "--runtime=tensorrt"),
    ("jax", "fp16", "--precision=fp16"),
    ("onnxruntime", "bf16", "openvino" if HAVE_ORT else r"\[export\]"),
])
def test_impossible_choices_are_one_clear_error(model, runtime, precision, match):
  with pytest.raises(errors.ConfigError, match=match):
    Predictor.load(model, runtime=runtime, precision=precision)


def test_a_missing_package_names_the_extra():
  with pytest.raises(errors.ConfigError, match=r'--runtime=openvino needs no_such_package_x.*'
                     r'pip install -e "\.\[export\]"'):
    runtimes.require("no_such_package_x", what="--runtime=openvino")


@pytest.mark.skipif(not HAVE_ORT, reason=NO_EXTRA)
def test_predict_cli_through_onnxruntime(model, images, reference, tmp_path):
  """predict.py --runtime=onnxruntime writes the people JAX finds (COCO results JSON)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "in"
  folder.mkdir()
  for i, im in enumerate(images):
    Image.fromarray(im).save(folder / f"im{i}.png")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, str(REPO / "predict.py"), f"--model={model}", f"--input={folder}",
       f"--output={tmp_path / 'out'}", "--runtime=onnxruntime", "--precision=fp32",
       "--min_score=0", "--draw=none"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "warning" not in proc.stderr.lower(), proc.stderr[-3000:]
  results = json.loads((tmp_path / "out" / "predictions.json").read_text())
  by_file = {}
  for r in results:
    by_file.setdefault(r["file_name"], []).append(r)
  for i, want in enumerate(reference):
    got = sorted(by_file.get(f"im{i}.png", []), key=lambda r: -r["score"])
    assert len(got) == len(want["scores"])
    if got:
      np.testing.assert_allclose([r["score"] for r in got], want["scores"], atol=PX_ATOL)


def test_predict_flags_offer_every_runtime_and_precision():
  # In a fresh process: predict.py's absl flags would clash with other tools' in this one.
  code = ("from mpn_jax.tools import predict; from mpn_jax.inference import runtimes; "
          "assert predict.RUNTIMES == runtimes.RUNTIMES, predict.RUNTIMES; "
          "assert predict.PRECISIONS == runtimes.PRECISIONS, predict.PRECISIONS")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=300,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
