"""Helpers shared by the datasets' ``plot`` methods."""

import numpy as np

__all__ = ('percentile_stretch',)


def percentile_stretch(
    image: np.ndarray, lower: float = 2, upper: float = 98
) -> np.ndarray:
    """Stretch the *lower*-*upper* percentile range of an image to [0, 1].

    TorchGeo's ``percentile_normalization`` for display, which TorchGeo 0.10
    deprecates (its replacement, ``quantile_normalization``, is new in 0.10), that
    also ignores NaN no-data: percentiles are taken over the finite values and NaN
    pixels are drawn black.

    Args:
        image: the image, any shape (percentiles over all of it).
        lower: lower percentile, in [0, 100].
        upper: upper percentile, in [0, 100].

    Returns:
        The stretched image, float, clipped to [0, 1]; zeros if nothing is finite.
    """
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape)
    low, high = np.percentile(finite, (lower, upper))
    stretched: np.ndarray = np.clip((image - low) / (high - low + 1e-6), 0, 1)
    stretched[np.isnan(stretched)] = 0
    return stretched
