"""Tree-ring watermarking (Wen et al., 2023) of the initial noise, detected by exact-as-possible inversion.

A ring key is written into the Fourier transform of ``z_T`` (:mod:`.key`), images are generated with
BDIA-DDIM and saved as 8 bits, and detection inverts image -> ``z_0`` (decoder inversion) -> ``z_T``
(BDIA inversion) and tests the masked Fourier coefficients against the key (:mod:`.stats`).
"""

from .detect import Detection, Generated, detect, generate, save_images, score_noise, to_uint8
from .key import TreeRingKey, frequency_radius, inject, make_ring_key
from .metrics import roc_auc, tpr_at_fpr
from .stats import log_ncf_cdf, log_ncx2_cdf, noise_statistic

__all__ = [
    "TreeRingKey", "make_ring_key", "inject", "frequency_radius",
    "log_ncf_cdf", "log_ncx2_cdf", "noise_statistic", "roc_auc", "tpr_at_fpr",
    "Generated", "Detection", "generate", "detect", "score_noise", "save_images", "to_uint8",
]
