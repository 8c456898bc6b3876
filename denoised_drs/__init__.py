"""denoised_drs: certified l2 robustness by (Dual) Randomized Smoothing, with diffusion denoising.

The sound core is importable without any optional model code::

    from denoised_drs import Smooth, DualSmooth
"""

from denoised_drs.smoothing import Certificate, DualSmooth, Smooth, SmoothedClassifier

__version__ = "0.1.0"

__all__ = ["Certificate", "DualSmooth", "Smooth", "SmoothedClassifier", "__version__"]
