"""Band statistics of the MMEarth corpora, and how to read one band's from them.

Every corpus comes with ``<corpus>_band_stats.json``: per statistics key (one per
modality, two for Sentinel-2: ``sentinel2_l1c`` and ``sentinel2_l2a``) the mean,
standard deviation, minimum and maximum of each stored band. The normalisers of
:mod:`torchgeo_mmearth.transforms` z-score with them.
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import TypeAlias

from .registry import MODALITIES, SENTINEL2_INPUT_BANDS

__all__ = ['MMEARTH_S2_BAND_STATS', 'BandStats', 'band_statistics', 'read_band_stats']

#: ``{stats key: {'mean' | 'std' | 'min' | 'max': per-band values}}``, the layout
#: of ``<corpus>_band_stats.json``; the lists hold every stored band of the
#: modality, in stored order (Sentinel-2 lists may also hold just the 12 input
#: bands, without B10, in input order).
BandStats: TypeAlias = Mapping[str, Mapping[str, Sequence[float]]]

#: Sentinel-2 statistics of MMEarth, in the band order of
#: :data:`~torchgeo_mmearth.modalities.SENTINEL2_INPUT_BANDS` (B1-B7, B8A, B8,
#: B9, B11, B12), per processing level, as digital numbers. MMEarth z-scores each
#: tile with the statistics of its level (MMEarth-data ``utils/normalization.py``:
#: 100 000 tiles, L1C and L2A separated by tile_info). The released band_stats
#: files (sid.erda.dk) cannot be read here; these values are the published copies
#: below. Which corpus (MMEarth, MMEarth64 or MMEarth100k) they were computed on is
#: not stated by either source: when you have the corpus, prefer its own
#: ``<corpus>_band_stats.json``
#: (``MMEarthS2Normalize(band_stats=path)``).
MMEARTH_S2_BAND_STATS: BandStats = {
    # L1C: the SENTINEL2_L1C_MEAN / SENTINEL2_L1C_STD constants of a public Google
    # Scenic LOCA-on-MMEarth configuration in the GitHub code index (the
    # repository name could not be established); its header quotes the
    # 'sentinel2_l1c' entry of band_stats.json, whose 13 std values are these 12
    # with B10 (61.707...) inserted: the lists are band_stats.json minus B10.
    'sentinel2_l1c': {
        'mean': (
            1864.880176877408,
            1656.9923384425733,
            1561.2433627865414,
            1633.6041005007844,
            1846.642924880421,
            2422.1354550099322,
            2706.1684786306714,
            2907.509651871235,
            2620.484567631748,
            974.4786592695265,
            2154.0573745085508,
            1464.8020890030184,
        ),
        'std': (
            1520.0684839687428,
            1575.4239525583005,
            1474.3747757041376,
            1734.9206729983894,
            1697.1412804437439,
            1584.959816138674,
            1577.9910344404889,
            1560.2251591506092,
            1519.2164490452863,
            823.3855623314192,
            1311.5885770761618,
            1140.1057025823181,
        ),
    },
    # L2A: lgordon99/mmearth-bench (MMEarth-Bench, arXiv 2602.06285),
    # normalization_data.json at a92db3f, entry "MPMAE" -> "Sentinel2" (the
    # statistics that benchmark feeds MP-MAE with, listed after its band
    # selection [0-6, 8, 7, 9, 10, 11], i.e. in this order); the same values are the
    # SENTINEL2_L2A_MEAN / _STD of the Scenic configuration above.
    'sentinel2_l2a': {
        'mean': (
            1349.3977794889083,
            1479.9521800379623,
            1720.3688077425966,
            1899.1848715975957,
            2253.9309600057886,
            2808.2001963620132,
            3003.424149045887,
            3149.5364927329806,
            3110.840562275062,
            3213.7636154015954,
            2399.086213373806,
            1811.7986415136786,
        ),
        'std': (
            2340.2916479338087,
            2375.872101251672,
            2256.8997709659416,
            2354.181051828758,
            2292.99569489449,
            2033.2166835293804,
            1920.1736418230105,
            1816.6152354201365,
            1988.1938283738782,
            1947.9031620588928,
            1473.224812450967,
            1390.6781165633136,
        ),
    },
}


def read_band_stats(source: BandStats | str | os.PathLike[str]) -> BandStats:
    """The statistics themselves, or those of a ``<corpus>_band_stats.json`` file.

    Args:
        source: statistics, or the path of a band statistics file.

    Returns:
        The statistics.

    Raises:
        TypeError: if the file does not hold a JSON object.
    """
    if not isinstance(source, str | os.PathLike):
        return source
    with open(source) as file:
        stats = json.load(file)
    if not isinstance(stats, Mapping):
        raise TypeError(
            f'{os.fspath(source)}: band statistics must be a JSON object '
            f'{{stats key: {{"mean": [...], "std": [...]}}}}, found '
            f'{type(stats).__name__}'
        )
    return stats


def band_statistics(
    band_stats: BandStats, stats_key: str, modality: str
) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of every band in one statistics entry.

    Args:
        band_stats: the corpus band statistics.
        stats_key: the entry, one of the modality's ``stats_keys``.
        modality: the modality whose bands the entry lists.

    Returns:
        ``{band: (mean, std)}``; values may be NaN (L2A B10, which is all zero).

    Raises:
        ValueError: if the entry is missing or does not list one mean and one
            standard deviation per band.
    """
    if stats_key not in band_stats:
        raise ValueError(
            f'Band statistics have no entry {stats_key!r} for modality {modality!r}; '
            f'entries present: {sorted(band_stats)}'
        )
    entry = band_stats[stats_key]
    stored = MODALITIES[modality].bands
    for field in ('mean', 'std'):
        found = len(entry[field]) if field in entry else 0
        lengths = {len(stored)}
        if modality == 'sentinel2':
            lengths.add(len(SENTINEL2_INPUT_BANDS))
        if found not in lengths:
            raise ValueError(
                f'Band statistics {stats_key!r} must list {len(stored)} {field!r} '
                f'values (bands {list(stored)})'
                + (
                    f' or {len(SENTINEL2_INPUT_BANDS)} (input bands '
                    f'{list(SENTINEL2_INPUT_BANDS)})'
                    if modality == 'sentinel2'
                    else ''
                )
                + f', found {found or "no"}'
            )
    means, stds = entry['mean'], entry['std']
    bands = stored if len(means) == len(stored) else SENTINEL2_INPUT_BANDS
    return {
        band: (float(mean), float(std))
        for band, mean, std in zip(bands, means, stds, strict=True)
    }
