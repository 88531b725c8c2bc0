"""Stage two's config (the Pose Residual Network): re-exports mpn_jax/configs/prn.py (the presets,
the commands and every field are documented there), so that --config=configs/prn.py[:preset] works
from the checkout."""

from mpn_jax.configs.prn import get_config  # noqa: F401
from mpn_jax.configs.prn import PRESETS  # noqa: F401
