"""Sentinel-2 band names: every spelling in use, and the one MMEarth uses.

Datasets spell the same band in many ways (``B08A``, ``B8a``, ``S2_B8A``,
``08A - Vegetation Red Edge``) and order B8 and B8A differently (BigEarthNet and
GEO-Bench put B8 first, MMEarth B8A), so bands are matched by canonical name,
never by position.
"""

import re
from collections.abc import Mapping

from .registry import MODALITIES

__all__ = ['GEOBENCH_SENTINEL2_NAMES', 'SENTINEL2_BANDS', 'canonical_band_name']

#: Every Sentinel-2 band, as MMEarth names them, in MMEarth's stored order.
SENTINEL2_BANDS = MODALITIES['sentinel2'].bands

#: The Sentinel-2 band names of GEO-Bench's files, in the order of its m-eurosat and
#: m-brick-kiln files, with the canonical band each names.
GEOBENCH_SENTINEL2_NAMES: Mapping[str, str] = {
    '01 - Coastal aerosol': 'B1',
    '02 - Blue': 'B2',
    '03 - Green': 'B3',
    '04 - Red': 'B4',
    '05 - Vegetation Red Edge': 'B5',
    '06 - Vegetation Red Edge': 'B6',
    '07 - Vegetation Red Edge': 'B7',
    '08 - NIR': 'B8',
    '08A - Vegetation Red Edge': 'B8A',
    '09 - Water vapour': 'B9',
    '10 - SWIR - Cirrus': 'B10',
    '11 - SWIR': 'B11',
    '12 - SWIR': 'B12',
}

_PATTERN = re.compile(
    r'(?:(?:s2|sentinel[-_ ]?2)[-_ .]?)?b(?:and)?[-_ ]?0*(\d{1,2})(a?)', re.IGNORECASE
)


def canonical_band_name(name: str) -> str:
    """Spell a Sentinel-2 band name the way MMEarth does.

    Accepted spellings include those of TorchGeo's and GEO-Bench's datasets:
    ``B01``/``B1``, ``B08``, ``B8A``/``B8a``/``B08A``, ``S2_B8A`` (So2Sat),
    ``S2B8A``, ``sentinel2_b8a``, ``band_8a``, in any letter case, and GEO-Bench's
    long names (:data:`GEOBENCH_SENTINEL2_NAMES`, e.g. ``'08 - NIR'``).

    Args:
        name: a band name.

    Returns:
        ``'B1'`` ... ``'B12'`` or ``'B8A'``.

    Raises:
        ValueError: if *name* is not a Sentinel-2 band.
    """
    if name in GEOBENCH_SENTINEL2_NAMES:
        return GEOBENCH_SENTINEL2_NAMES[name]
    match = _PATTERN.fullmatch(name.strip())
    band = f'B{int(match[1])}{match[2].upper()}' if match else ''
    if band not in SENTINEL2_BANDS:
        raise ValueError(
            f'{name!r} is not a Sentinel-2 band name; expected one of '
            f"{SENTINEL2_BANDS} (also spelled 'B01', 'B8a', 'B08A', 'S2_B8A', ...)"
        )
    return band
