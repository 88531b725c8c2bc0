"""The training configs of both stages, as plain data (imports only ml_collections).

  branches.py  stage one (get_config(preset)); configs/branches.py in the checkout re-exports it.
  prn.py       stage two, the Pose Residual Network; configs/prn.py re-exports it.
  defaults.py  the default blocks both embed (input, model, inference, eval, PRN data, train).

Pass a file to the commands as --config=PATH[:preset], e.g. --config=configs/branches.py:synthetic
in the checkout, or the path of mpn_jax/configs/branches.py anywhere.
"""
