"""The package's layers: a module imports only from its own layer or the layers below it.

  core <- data, models <- inference <- evaluation <- training <- tools
(mpn_jax/__init__.py lists the modules of each layer.) Checked on the source with `ast`, so
function-local imports count too.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mpn_jax"

# Rank of each layer; data and models are one level (neither imports the other).
LAYERS = {"core": 0, "data": 1, "models": 1, "inference": 2, "evaluation": 3, "training": 4,
          "tools": 5}
LAYERS["export"] = 3  # mpn_jax.export: above inference, beside evaluation (export.py's library)
CORE = {"coco", "boxes", "prn_grid", "errors", "files", "parallel", "checkpoints", "cli", "logs",
        "visualize", "losses", "configs"}
TOOLS = {"quickstart", "benchmark", "peer"}


def layer(module):
  """The layer of a dotted module name inside mpn_jax (e.g. 'mpn_jax.inference.tta')."""
  parts = module.split(".")
  top = parts[1] if len(parts) > 1 else ""
  if top in CORE or top == "":
    return "core"
  if top in TOOLS:
    return "tools"
  if top == "weights":
    return "models"
  if top in LAYERS:
    return top
  raise AssertionError(f"{module}: no layer; add it to tests/test_layers.py")


def modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    name = ".".join(rel.parts)
    yield name.removesuffix(".__init__"), path


def imported(path):
  """The mpn_jax modules a file imports (module-level and function-local)."""
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("mpn_jax."):
          yield alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "mpn_jax":
        for alias in node.names:
          yield f"mpn_jax.{alias.name}"
      elif node.module.startswith("mpn_jax."):
        yield node.module


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda x: str(x))
def test_no_module_imports_a_higher_layer(name, path):
  if name == "mpn_jax":  # the lazy `Predictor` export, documented there
    return
  mine = LAYERS[layer(name)]
  higher = sorted({m for m in imported(path) if LAYERS[layer(m)] > mine})
  assert not higher, f"{name} ({layer(name)}) imports higher layers: {higher}"


def test_data_and_models_do_not_import_each_other():
  for name, path in modules():
    if layer(name) in ("data", "models"):
      other = {"data": "models", "models": "data"}[layer(name)]
      assert not [m for m in imported(path) if layer(m) == other], name


def test_serving_and_evaluation_import_no_tensorflow():
  """Prediction, export and evaluation on image folders or annotations need no TensorFlow (about
  2 s to import): only the TFDS input pipeline, training and the SavedModel export load it."""
  script = ("import sys; import mpn_jax.inference.video, mpn_jax.evaluation.evaluators, "
            "mpn_jax.export.stablehlo, mpn_jax.export.onnx, mpn_jax.tools.predict; "
            "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
