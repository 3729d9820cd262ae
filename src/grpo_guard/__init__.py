"""grpo-guard: Flow-GRPO and GRPO-Guard for flow-matching image generators, kept honest.

The public algorithm API (pure tensor functions) is re-exported here::

    from grpo_guard import sde_step, flow_sigmas, group_advantages, policy_loss

See ``docs/api.md``.
"""

import os as _os

# Intel MKL (torch's CPU BLAS) picks its kernels by the memory alignment of each call's buffers unless its
# conditional numerical reproducibility is set, so the same seed could give runs that differ in the last
# bits, which training then amplifies. MKL reads this when torch makes its first BLAS call: set here, before
# any of this package's modules imports torch, it holds for every entry point (the CLI, demo and study
# workers, bench children and scripts that import grpo_guard). A value set by the user wins
# (docs/reliability.md, "Same seed, same run").
_os.environ.setdefault("MKL_CBWR", "AUTO")

from .core import *  # noqa: E402,F401,F403
from .core import __all__ as _core_all  # noqa: E402

__version__ = "0.1.0"
__all__ = ["__version__", *_core_all]
