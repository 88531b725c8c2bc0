"""mpn-jax: MultiPoseNet (Kocabas, Karagoz, Akbas, ECCV 2018) in JAX/Flax."""

__version__ = "0.1.0"
