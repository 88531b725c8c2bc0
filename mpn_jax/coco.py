"""COCO person-keypoint constants: the one source of names, flip pairs, limbs and OKS sigmas.

Everything that swaps left/right, draws a skeleton or scores keypoints imports from here, so a
mismatch between training and test time cannot be written.
"""

import numpy as np

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)  # 17
PERSON_CATEGORY_ID = 1

# Index of the mirrored keypoint for each keypoint (horizontal flip): FLIP_PERM[FLIP_PERM] == identity.
FLIP_PERM = np.array([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15], np.int32)

# Limbs as 0-based keypoint index pairs (COCO's 1-based 'skeleton' field minus one).
SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)

# Per-keypoint OKS sigmas, exactly as pycocotools' COCOeval uses them.
OKS_SIGMAS = np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89],
    np.float32) / 10.0

# The category record written into COCO-format files this project generates.
PERSON_CATEGORY = {
    "supercategory": "person",
    "id": PERSON_CATEGORY_ID,
    "name": "person",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [[a + 1, b + 1] for a, b in SKELETON],
}

# ImageNet statistics in RGB order, 0..255 scale (torchvision convention).
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255.0


def normalize_image(image):
  """Maps RGB pixels [..., 3] in 0..255 (uint8 or float) to ImageNet-normalised float32.

  Works on numpy, tf and jax arrays alike (arithmetic only); the input pipeline and inference both
  call it so that the network always sees the same normalisation.
  """
  return (image * 1.0 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
