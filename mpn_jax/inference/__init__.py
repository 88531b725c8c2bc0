"""Inference: a trained model (both stages) from images to people.

  postprocess  network outputs -> keypoint peaks, person boxes (NMS), PRN inputs;
  tta          flip / multi-scale test-time augmentation, outputs merged;
  assignment   keypoint-to-person assignment from PRN probabilities;
  pipeline     the jitted whole pipeline (`make_predict_fn`; its config: defaults.inference_config);
  runtimes     where the network and the PRN run (jax | onnxruntime | openvino) and in which
               precision (fp32 | bf16); the ONNX conversion;
  predictor    `Predictor.load(model_path)`: images in, people out (numpy, original pixels);
  images       files in, pictures and predictions.json out (`python predict.py`);
  video        a video file or webcam in, an annotated H.264 video and per-frame JSON out;
  coco_results COCO keypoint and box result records (predictions.json and evaluate.py).
Exporting a model (StableHLO, ONNX, SavedModel; `python export.py`): mpn_jax.export.
"""
