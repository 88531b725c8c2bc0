"""Evaluation: COCO files and COCOeval (`coco_io`), the PRN-on-ground-truth protocol
(`prn_protocol`) and the evaluators behind training's periodic evaluation and
`python evaluate.py` (`evaluators`)."""
