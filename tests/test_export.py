"""export.py / mpn_jax.export: each format's outputs against the in-process pipeline or network on
the same inputs, the docs' loader in a process that cannot import mpn_jax, and the error cases.

Tolerances (measured on the tiny model, CPU): StableHLO = the in-process pipeline bit for bit;
ONNX Runtime, OpenVINO (f32) and the SavedModel within 1e-5 of the JAX network (about 1.3e-6 seen).
"""

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mpn_jax import export
from mpn_jax.export import common
from mpn_jax.export import stablehlo

from conftest import REPO
# Tiny randomly initialised stages saved as checkpoints (no training); imported so pytest uses it
# as a fixture of this module too.
from test_evaluate_cli import tiny_stages  # noqa: F401  pylint: disable=unused-import

NETWORK_ATOL = 1e-5
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "jax2onnx", "onnxruntime"))
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
NO_EXTRA = 'the export extra is not installed (pip install -e ".[export]")'

# Makes `import NAME` (and its submodules) fail, as if it were not installed.
BLOCKER = textwrap.dedent("""\
    import sys
    class _Block:
      def __init__(self, names): self.names = names
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.names:
          raise ModuleNotFoundError(f'No module named {name!r} (blocked)', name=name)
    sys.meta_path.insert(0, _Block(BLOCKED))
    """)


@pytest.fixture(scope="module")
def model(tiny_stages):  # noqa: F811
  return str(tiny_stages[0].parent)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((4, 96, 96, 3)).astype(np.float32)
  return images, np.asarray([0.5, 1.0, 2.0, 0.75], np.float32)


@pytest.fixture(scope="module")
def network(model):
  """The JAX network of the model (the reference for ONNX and the SavedModel)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  from mpn_jax.export import onnx as onnx_export  # pylint: disable=g-import-not-at-top
  branch_vars, _, bcfg, _, _ = common.restore_model(model)
  fn = jax.jit(onnx_export.network_fn(models.build_multiposenet(bcfg.model), branch_vars))
  return lambda x: dict(zip(onnx_export.OUTPUT_NAMES, (np.asarray(a) for a in fn(x))))


def _run(*args, blocked=(), cwd=REPO):
  """export.py in a subprocess (optionally with modules blocked)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  code = (BLOCKER.replace("BLOCKED", repr(set(blocked))) +
          f"import runpy; sys.argv = {['export.py', *args]!r}\n"
          f"runpy.run_path({str(REPO / 'export.py')!r}, run_name='__main__')\n")
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


# --- StableHLO: the whole pipeline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stablehlo_dir(model, tmp_path_factory):
  out = tmp_path_factory.mktemp("export") / "stablehlo"
  summary = export.export_model(model, "stablehlo", str(out), platforms=("cpu", "cuda", "tpu"))
  assert "exported stablehlo" in summary
  return out


def test_stablehlo_is_the_pipeline_bit_for_bit(model, stablehlo_dir, inputs):
  from mpn_jax.inference.predictor import Predictor  # pylint: disable=g-import-not-at-top
  images, scales = inputs
  assert sorted(os.listdir(stablehlo_dir)) == ["manifest.json", "params.npz", "pipeline.stablehlo"]
  exported, params, manifest = stablehlo.load(str(stablehlo_dir))
  assert manifest["inputs"]["images"]["shape"] == ["B", 96, 96, 3]
  assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
  assert manifest["config"]["inference"]["assign_method"] == "greedy"
  # The weights are arguments, not constants: the function file is far smaller than they are.
  assert os.path.getsize(stablehlo_dir / "pipeline.stablehlo") < 0.2 * sum(p.nbytes for p in params)
  predictor = Predictor.load(model, batch_size=4)
  for batch in (4, 1, 3):  # one exported function, any batch size
    # (The same batch size on both sides: XLA's results for one image may differ in the last bit
    # between batch sizes, exported or not.)
    want = {k: np.asarray(v) for k, v in predictor.fn(images[:batch], scales[:batch]).items()}
    assert want["valid"].any()  # something to compare
    got = exported.call(images[:batch], scales[:batch], *params)
    assert set(got) == set(want) == set(manifest["outputs"])
    for k in want:
      np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)


def _docs_loader():
  text = (REPO / "docs" / "export.md").read_text()
  m = re.search(r"<!-- loader: run_exported.py -->\s*```python\n(.*?)```", text, re.S)
  assert m, "docs/export.md: the loader script (marked <!-- loader: run_exported.py -->)"
  return m.group(1)


def test_the_docs_loader_runs_without_mpn_jax(stablehlo_dir, inputs, tmp_path, model):
  images, scales = inputs
  script = tmp_path / "run_exported.py"
  script.write_text(_docs_loader())
  np.savez(tmp_path / "in.npz", images=images, scales=scales)
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  # As many CPU devices as this process (tests/conftest.py): XLA's CPU results can differ in the
  # last bit with the device count (1 or 2 ulp on box scores measured), exported or not.
  env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4")
  prelude = BLOCKER.replace("BLOCKED", repr({"mpn_jax", "tensorflow", "flax"}))
  check = subprocess.run([sys.executable, "-I", "-c", prelude + "import mpn_jax"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
  assert check.returncode != 0 and "No module named 'mpn_jax'" in check.stderr
  code = prelude + (f"import runpy; sys.argv = ['run_exported.py', {str(stablehlo_dir)!r}, "
                    "'in.npz', 'out.npz']\n"
                    "runpy.run_path('run_exported.py', run_name='__main__')\n"
                    "assert not [m for m in sys.modules if m.split('.')[0] in "
                    "('mpn_jax', 'flax', 'tensorflow')]\n")
  proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "person" in proc.stdout
  for b in range(len(images)):  # each image's people best first
    printed = re.findall(rf"^image {b} person \d+: score ([0-9.]+)", proc.stdout, re.M)
    assert [float(x) for x in printed] == sorted((float(x) for x in printed), reverse=True)
  exported, params, _ = stablehlo.load(str(stablehlo_dir))
  want = exported.call(images, scales, *params)
  with np.load(tmp_path / "out.npz") as got:
    for k in want:  # a fresh process, no mpn_jax: the same bits
      np.testing.assert_array_equal(got[k], np.asarray(want[k]), err_msg=k)


def test_a_host_assignment_cannot_be_exported(model, tmp_path):
  with pytest.raises(common.ExportError, match="--assign_method"):
    stablehlo.export(model, str(tmp_path / "out"), assign_method="hungarian_log")
  assert not (tmp_path / "out").exists()
  proc = _run(f"--model={model}", "--format=stablehlo", f"--output={tmp_path / 'out'}",
              "--assign_method=hungarian")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("export.py: error: --assign_method=")
  assert not (tmp_path / "out").exists()


# --- the network: ONNX, SavedModel ---------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_dir(model, tmp_path_factory):
  if not HAVE_ONNX:
    pytest.skip(NO_EXTRA)
  out = tmp_path_factory.mktemp("export") / "onnx"
  export.export_model(model, "onnx", str(out))
  return out


def test_onnx_is_valid_without_duplicated_weights(onnx_dir):
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  proto = onnx.load(str(onnx_dir / "multiposenet.onnx"))
  onnx.checker.check_model(proto, full_check=True)
  digests = [hashlib.sha256(numpy_helper.to_array(i).tobytes()).hexdigest() + str(i.dims)
             for i in proto.graph.initializer]
  assert len(digests) == len(set(digests))  # every tensor once (the shared RetinaNet head too)
  manifest = json.loads((onnx_dir / "manifest.json").read_text())
  sizes = manifest["sizes"]
  assert sizes["initializers_merged"] > 0 and sizes["bytes"] < sizes["bytes_raw"]
  assert manifest["outputs"]["keypoints"]["shape"] == ["B", 24, 24, 18]
  anchors = np.load(onnx_dir / "anchors.npy")
  assert anchors.shape == (manifest["outputs"]["cls_logits"]["shape"][1], 4)


def _compare(got, want):
  for k in want:
    assert got[k].shape == want[k].shape, k
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=NETWORK_ATOL, err_msg=k)


def test_onnx_runtime_matches_the_network(onnx_dir, network, inputs):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  session = ort.InferenceSession(str(onnx_dir / "multiposenet.onnx"),
                                 providers=["CPUExecutionProvider"])
  for batch in (4, 1):
    x = inputs[0][:batch]
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": x})))
    _compare(got, network(x))


def test_onnx_prn_matches_the_jax_prn(onnx_dir, model):
  import jax  # pylint: disable=g-import-not-at-top
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  from mpn_jax.inference import runtimes  # pylint: disable=g-import-not-at-top
  _, prn_vars, _, pcfg, _ = common.restore_model(model)
  x = np.random.default_rng(2).uniform(0, 1, (5, 56, 36, 17)).astype(np.float32)
  want = np.asarray(jax.jit(runtimes.prn_fn(models.build_prn(pcfg.model), prn_vars))(x))
  session = ort.InferenceSession(str(onnx_dir / "prn.onnx"), providers=["CPUExecutionProvider"])
  (got,) = session.run(None, {"prn_inputs": x})
  np.testing.assert_allclose(got, want, rtol=0, atol=NETWORK_ATOL)
  np.testing.assert_allclose(got.reshape(5, -1, 17).sum(1), 1.0, atol=1e-5)  # softmax per type
  manifest = json.loads((onnx_dir / "manifest.json").read_text())
  assert manifest["prn"]["file"] == "prn.onnx"


@pytest.mark.skipif(not HAVE_OPENVINO, reason=NO_EXTRA + " (openvino)")
def test_openvino_matches_the_network(onnx_dir, network, inputs):
  from mpn_jax.inference import runtimes  # pylint: disable=g-import-not-at-top
  (ov,) = runtimes.require("openvino", what="this test")  # without OpenVINO's usage-event fork
  # f32: OpenVINO's CPU default may compute in bf16 (max abs diff 1.8e-2 measured).
  compiled = ov.Core().compile_model(str(onnx_dir / "multiposenet.onnx"), "CPU",
                                     {"INFERENCE_PRECISION_HINT": "f32"})
  x = inputs[0][:2]
  result = compiled({"images": x})
  _compare({n: result[compiled.output(n)] for n in ("keypoints", "cls_logits", "box_deltas")},
           network(x))


def test_saved_model_matches_the_network(model, network, inputs, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = tmp_path / "saved_model"
  export.export_model(model, "saved_model", str(out))
  assert {"saved_model.pb", "variables", "manifest.json", "anchors.npy"} <= set(os.listdir(out))
  serve = tf.saved_model.load(str(out)).signatures["serving_default"]
  for batch in (4, 1):
    x = inputs[0][:batch]
    got = {k: v.numpy() for k, v in serve(images=tf.constant(x)).items()}
    _compare(got, network(x))


# --- errors --------------------------------------------------------------------------------------


def _error_line(proc):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("export.py: error: "), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  return lines[-1]


def test_a_missing_extra_gives_the_install_hint(model, tmp_path):
  line = _error_line(_run(f"--model={model}", "--format=onnx", f"--output={tmp_path / 'o'}",
                          blocked={"jax2onnx", "onnx", "onnxruntime"}))
  assert 'pip install -e ".[export]"' in line
  assert "are not installed" in line  # several missing: "needs onnx and jax2onnx, which are ..."
  assert not (tmp_path / "o").exists()


def test_bad_input_is_one_line_and_nothing_is_overwritten(model, tmp_path):
  line = _error_line(_run(f"--model={tmp_path / 'nothing'}", "--format=stablehlo",
                          f"--output={tmp_path / 'o'}"))
  assert "no such folder" in line
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "branches").mkdir()
  assert "no prn/" in _error_line(_run(f"--model={tmp_path / 'half'}", "--format=stablehlo",
                                       f"--output={tmp_path / 'o'}"))
  assert "--format" in _error_line(_run(f"--model={model}", "--format=tflite",
                                        f"--output={tmp_path / 'o'}"))
  full = tmp_path / "full"
  full.mkdir()
  (full / "keep.txt").write_text("mine")
  assert "not empty" in _error_line(_run(f"--model={model}", "--format=stablehlo",
                                         f"--output={full}"))
  assert (full / "keep.txt").read_text() == "mine" and os.listdir(full) == ["keep.txt"]
  a_file = tmp_path / "a_file"
  a_file.write_text("mine")
  assert "a file stands there" in _error_line(_run(f"--model={model}", "--format=onnx",
                                                   f"--output={a_file}"))
  assert a_file.read_text() == "mine"
  assert not (tmp_path / "o").exists()
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_the_command_exports_into_an_empty_folder(model, tmp_path):
  out = tmp_path / "empty"
  out.mkdir()
  proc = _run(f"--model={model}", "--format=stablehlo", f"--output={out}", "--platforms=cpu")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "exported stablehlo" in proc.stdout
  assert sorted(os.listdir(out)) == ["manifest.json", "params.npz", "pipeline.stablehlo"]
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
