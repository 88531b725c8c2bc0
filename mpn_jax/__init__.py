"""mpn-jax: MultiPoseNet (Kocabas, Karagoz, Akbas, ECCV 2018) in JAX/Flax.

  from mpn_jax import Predictor
  predictor = Predictor.load("runs/coco")   # the model folder: branches/ and prn/
  people = predictor(image)                 # [H, W, 3] uint8 RGB -> keypoints, boxes, scores

Layers (a module imports only from its own layer or those below; tests/test_layers.py checks):
  core        coco, boxes, prn_grid, errors, files, parallel, checkpoints, cli, logs, visualize,
              losses, configs (plain-data training configs)
  data        mpn_jax.data: TFDS datasets, input pipeline, PRN samples
  models      mpn_jax.models: backbone, FPNs, heads, PRN; weights (converted ImageNet weights)
  inference   mpn_jax.inference: post-processing, TTA, assignment, the pipeline, Predictor
  evaluation  mpn_jax.evaluation: COCO files and COCOeval, PRN protocol, evaluators
  training    mpn_jax.training: train state, steps, the loop
  tools       quickstart, benchmark (and peer: the PyTorch peer it times), mpn_jax.tools: the
              commands train, evaluate, predict, export (python -m mpn_jax.tools.<command>; the
              checkout's root train.py etc. run them)
"""

__version__ = "0.1.0"


def __getattr__(name):
  # Lazy, so that `import mpn_jax` stays light (no JAX, Flax or Orbax until a Predictor is used).
  if name == "Predictor":
    from mpn_jax.inference.predictor import Predictor  # pylint: disable=g-import-not-at-top
    return Predictor
  raise AttributeError(f"module 'mpn_jax' has no attribute {name!r}")
