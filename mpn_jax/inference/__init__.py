"""Inference: a trained model (both stages) from images to people.

  postprocess  network outputs -> keypoint peaks, person boxes (NMS), PRN inputs;
  tta          flip / multi-scale test-time augmentation, outputs merged;
  assignment   keypoint-to-person assignment from PRN probabilities;
  pipeline     `inference_config()` and the jitted whole pipeline (`make_predict_fn`);
  predictor    `Predictor.load(model_path)`: images in, people out (numpy, original pixels);
  images       files in, pictures and predictions.json out (`python predict.py`).
"""

from mpn_jax.inference.pipeline import inference_config
