"""The table of MMEarth modalities: stored layout, bands, no-data rules, pretext roles.

One table describes every dataset of the published MMEarth HDF5 corpora (Nedungadi
et al., "MMEarth: Exploring Multi-Modal Pretext Tasks For Geospatial Representation
Learning", ECCV 2024, https://arxiv.org/abs/2405.02771). The dataset reader, the
on-device normalisation, the pretraining heads and the corpus builder all read it,
so a modality is described once.

No-data rules fix the reference implementation (vishalned/MMEarth-train), see
:doc:`/data` for the reasoning:

* Sentinel-2 digital number 0 is no-data, flagged before any normalisation.
* ASTER is stored as int16, which cannot hold the ``-inf`` placeholder of the
  reference: the HDF5 float-to-int16 conversion clamps it to -32768, which is
  therefore no-data.
* Canopy height is stored as int8, which cannot hold the ``255`` placeholder:
  HDF5's conversion clamps it to 127 and a NumPy cast wraps it to -1. Heights
  and their standard deviations are non-negative metres far below 127, so 127
  and negative values are no-data.
* ESA WorldCover keeps tree cover (code 10, class 0); codes outside the legend
  (0 or 255) are no-data.
* Non-finite values (NaN, +-inf) are no-data in every floating-point modality.

Two releases of the data store two placeholders differently (:data:`VERSION_NODATA`):
the v001 files keep ESA WorldCover no-data as 255 and ERA5 no-data as ``+inf``, the
v1.0 files as 0 and NaN. Both are no-data by the rules above, so every release reads
correctly under them; the table names each release's own placeholders as well.
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    'DATA_VERSIONS',
    'IGNORE_INDEX',
    'MODALITIES',
    'PRETEXT_MODALITIES',
    'S2_TYPES',
    'SENTINEL2_INPUT_BANDS',
    'SENTINEL2_RGB_BANDS',
    'VERSION_ATTRIBUTE',
    'VERSION_NODATA',
    'Kind',
    'Level',
    'Modality',
    'check_data_version',
    'data_version',
    'nodata_values',
    'resolve_modality_bands',
    'sample_key',
    'split_data_version',
]

#: Target value of a class map or image-level class that carries no label.
IGNORE_INDEX = -1

#: Sentinel-2 processing levels, in the order of the per-sample ``s2_type`` index.
S2_TYPES = ('l1c', 'l2a')


class Level(StrEnum):
    """Spatial level of a modality."""

    #: One value per pixel, stored as ``(N, C, S, S)``.
    PIXEL = 'pixel'
    #: One vector per tile, stored as ``(N, C)``.
    IMAGE = 'image'


class Kind(StrEnum):
    """Value type of a modality."""

    #: Real values, z-scored with the corpus band statistics.
    CONTINUOUS = 'continuous'
    #: Class codes, remapped to class indices with :data:`IGNORE_INDEX` for no-data.
    CATEGORICAL = 'categorical'


def sample_key(name: str, level: Level, kind: Kind) -> str:
    """Sample key of a modality, following TorchGeo/Kornia conventions.

    Args:
        name: modality name.
        level: pixel-level map or image-level vector.
        kind: continuous values or classes.

    Returns:
        ``image_<name>`` for continuous maps, ``mask_<name>`` for class maps (Kornia
        resamples both with the same geometry, masks by nearest neighbour) and the
        plain name for image-level vectors and classes (Kornia passes them through).
    """
    if level is Level.IMAGE:
        return name
    if kind is Kind.CATEGORICAL:
        return f'mask_{name}'
    return f'image_{name}'


@dataclass(frozen=True)
class Modality:
    """Description of one MMEarth modality.

    Args:
        name: HDF5 dataset name.
        bands: channel names in stored order (axis 1 of the HDF5 dataset).
        level: pixel-level map or image-level vector.
        kind: continuous values or class codes.
        dtype: stored NumPy dtype.
        valid_range: inclusive range of valid raw values of a continuous modality;
            anything outside it, and any non-finite value, is no-data.
        class_values: raw codes of a categorical modality; the class index is the
            position in this tuple, any other code is no-data.
        one_hot: whether an image-level class is stored as a one-hot vector.
        stats_keys: keys of the band statistics file that hold this modality's
            statistics; two keys (L1C, L2A) select the statistics per tile.
        class_names: names of the classes of a categorical modality.
    """

    name: str
    bands: tuple[str, ...]
    level: Level
    kind: Kind
    dtype: str
    valid_range: tuple[float, float] = (float('-inf'), float('inf'))
    class_values: tuple[int, ...] = ()
    one_hot: bool = False
    stats_keys: tuple[str, ...] = field(default=())
    class_names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Sample key of this modality (see :func:`sample_key`)."""
        return sample_key(self.name, self.level, self.kind)

    @property
    def num_classes(self) -> int:
        """Number of classes of a categorical modality (0 for continuous ones)."""
        return len(self.class_values)

    @property
    def normalized(self) -> bool:
        """Whether the modality is z-scored with band statistics."""
        return self.kind is Kind.CONTINUOUS


_DW_CLASSES = (
    'water',
    'trees',
    'grass',
    'flooded vegetation',
    'crops',
    'shrub and scrub',
    'built',
    'bare',
    'snow and ice',
)
_ESA_CLASSES = (
    'tree cover',
    'shrubland',
    'grassland',
    'cropland',
    'built-up',
    'bare / sparse vegetation',
    'snow and ice',
    'permanent water bodies',
    'herbaceous wetland',
    'mangroves',
    'moss and lichen',
)
_SCL_CLASSES = (
    'no data',
    'saturated or defective',
    'dark area pixels',
    'cloud shadows',
    'vegetation',
    'not vegetated',
    'water',
    'unclassified',
    'cloud medium probability',
    'cloud high probability',
    'thin cirrus',
    'snow',
)
_BIOMES = (
    'Tundra',
    'Tropical & Subtropical Moist Broadleaf Forests',
    'Mediterranean Forests, Woodlands & Scrub',
    'Deserts & Xeric Shrublands',
    'Temperate Grasslands, Savannas & Shrublands',
    'Boreal Forests/Taiga',
    'Temperate Conifer Forests',
    'Temperate Broadleaf & Mixed Forests',
    'Montane Grasslands & Shrublands',
    'Mangroves',
    'Flooded Grasslands & Savannas',
    'Tropical & Subtropical Grasslands, Savannas & Shrublands',
    'Tropical & Subtropical Dry Broadleaf Forests',
    'Tropical & Subtropical Coniferous Forests',
)
_ERA5_BANDS = tuple(
    f'{period}_{variable}'
    for period in ('prev_month', 'curr_month', 'year')
    for variable in ('avg_temp', 'min_temp', 'max_temp', 'total_precip')
)

_ALL = (
    Modality(
        'sentinel2',
        (
            'B1',
            'B2',
            'B3',
            'B4',
            'B5',
            'B6',
            'B7',
            'B8A',
            'B8',
            'B9',
            'B10',
            'B11',
            'B12',
        ),
        Level.PIXEL,
        Kind.CONTINUOUS,
        'uint16',
        valid_range=(1, 65535),
        stats_keys=('sentinel2_l1c', 'sentinel2_l2a'),
    ),
    Modality(
        'sentinel2_cloudmask',
        ('QA60',),
        Level.PIXEL,
        Kind.CATEGORICAL,
        'uint16',
        class_values=(0, 1024, 2048),
        class_names=('clear', 'opaque clouds', 'cirrus clouds'),
    ),
    Modality(
        'sentinel2_cloudprod',
        ('MSK_CLDPRB',),
        Level.PIXEL,
        Kind.CONTINUOUS,
        'uint16',
        valid_range=(0, 100),
        stats_keys=('sentinel2_cloudprod',),
    ),
    Modality(
        'sentinel2_scl',
        ('SCL',),
        Level.PIXEL,
        Kind.CATEGORICAL,
        'uint8',
        class_values=tuple(range(12)),
        class_names=_SCL_CLASSES,
    ),
    Modality(
        'sentinel1',
        (
            'asc_VV',
            'asc_VH',
            'asc_HH',
            'asc_HV',
            'desc_VV',
            'desc_VH',
            'desc_HH',
            'desc_HV',
        ),
        Level.PIXEL,
        Kind.CONTINUOUS,
        'float32',
        stats_keys=('sentinel1',),
    ),
    Modality(
        'aster',
        ('elevation', 'slope'),
        Level.PIXEL,
        Kind.CONTINUOUS,
        'int16',
        valid_range=(-32767, 32767),
        stats_keys=('aster',),
    ),
    Modality(
        'era5',
        _ERA5_BANDS,
        Level.IMAGE,
        Kind.CONTINUOUS,
        'float32',
        stats_keys=('era5',),
    ),
    Modality(
        'dynamic_world',
        ('landcover',),
        Level.PIXEL,
        Kind.CATEGORICAL,
        'uint8',
        class_values=tuple(range(1, 10)),
        class_names=_DW_CLASSES,
    ),
    Modality(
        'canopy_height_eth',
        ('height', 'std'),
        Level.PIXEL,
        Kind.CONTINUOUS,
        'int8',
        valid_range=(0, 126),
        stats_keys=('canopy_height_eth',),
    ),
    Modality(
        'lat',
        ('sin', 'cos'),
        Level.IMAGE,
        Kind.CONTINUOUS,
        'float32',
        stats_keys=('lat',),
    ),
    Modality(
        'lon',
        ('sin', 'cos'),
        Level.IMAGE,
        Kind.CONTINUOUS,
        'float32',
        stats_keys=('lon',),
    ),
    Modality(
        'biome',
        ('biome',),
        Level.IMAGE,
        Kind.CATEGORICAL,
        'uint8',
        class_values=tuple(range(14)),
        one_hot=True,
        class_names=_BIOMES,
    ),
    Modality(
        'eco_region',
        ('eco_region',),
        Level.IMAGE,
        Kind.CATEGORICAL,
        'uint16',
        class_values=tuple(range(846)),
        one_hot=True,
    ),
    Modality(
        'month',
        ('sin_month', 'cos_month'),
        Level.IMAGE,
        Kind.CONTINUOUS,
        'float32',
        stats_keys=('month',),
    ),
    Modality(
        'esa_worldcover',
        ('map',),
        Level.PIXEL,
        Kind.CATEGORICAL,
        'uint8',
        class_values=(10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100),
        class_names=_ESA_CLASSES,
    ),
)

#: Every modality of the published HDF5 layout, in the order the writer creates them.
MODALITIES: Mapping[str, Modality] = {modality.name: modality for modality in _ALL}

#: The 12 Sentinel-2 bands the MP-MAE encoder reads (B10 dropped; B8A before B8).
SENTINEL2_INPUT_BANDS = tuple(b for b in MODALITIES['sentinel2'].bands if b != 'B10')

#: Bands of the MMEarth "rgb" models: blue, green, red (BGR order, as pretrained).
SENTINEL2_RGB_BANDS = ('B2', 'B3', 'B4')

#: The 12 pretext modalities of MP-MAE ("all_mod"), with the bands they use, in the
#: order of ``OUT_MODALITIES`` of the reference code (vishalned/MMEarth-train): the
#: order in which it sums the task losses, so the uncertainty weights (``log_vars``)
#: of the released checkpoints are indexed in it.
PRETEXT_MODALITIES: Mapping[str, tuple[str, ...]] = {
    'sentinel2': SENTINEL2_INPUT_BANDS,
    'sentinel1': MODALITIES['sentinel1'].bands,
    'aster': MODALITIES['aster'].bands,
    'era5': MODALITIES['era5'].bands,
    'dynamic_world': MODALITIES['dynamic_world'].bands,
    'canopy_height_eth': MODALITIES['canopy_height_eth'].bands,
    'lat': MODALITIES['lat'].bands,
    'lon': MODALITIES['lon'].bands,
    'biome': MODALITIES['biome'].bands,
    'eco_region': MODALITIES['eco_region'].bands,
    'month': MODALITIES['month'].bands,
    'esa_worldcover': MODALITIES['esa_worldcover'].bands,
}


def resolve_modality_bands(
    modalities: Sequence[str] | None = None,
    modality_bands: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Validate a choice of modalities and bands.

    Args:
        modalities: modality names; None selects :data:`PRETEXT_MODALITIES`, or the
            keys of *modality_bands* when those are given.
        modality_bands: bands per modality, in the order wanted in the samples;
            modalities not listed get their default bands (the MP-MAE input bands
            for sentinel2, every band otherwise).

    Returns:
        The bands of every selected modality, in selection order.

    Raises:
        ValueError: naming the unknown modality or band and listing the valid ones.
        TypeError: if a string is given where a sequence of names is expected.
    """
    modality_bands = dict(modality_bands or {})
    if modalities is None:
        modalities = list(modality_bands) or list(PRETEXT_MODALITIES)
    if isinstance(modalities, str):
        raise TypeError(
            f'modalities must be a sequence of names, got the string {modalities!r}'
        )
    unknown = [
        name for name in [*modalities, *modality_bands] if name not in MODALITIES
    ]
    if unknown:
        raise ValueError(
            f'Unknown modality {unknown[0]!r}; valid modalities are {list(MODALITIES)}'
        )
    extra = [name for name in modality_bands if name not in modalities]
    if extra:
        raise ValueError(
            f'modality_bands names {extra[0]!r}, which is not in modalities '
            f'{list(modalities)}'
        )
    if len(set(modalities)) != len(modalities):
        raise ValueError(f'modalities has duplicates: {list(modalities)}')

    resolved: dict[str, tuple[str, ...]] = {}
    for name in modalities:
        valid = MODALITIES[name].bands
        if isinstance(modality_bands.get(name), str):
            raise TypeError(f'Bands of {name!r} must be a sequence, got a string')
        if name in modality_bands:
            bands = tuple(modality_bands[name])
        elif name in PRETEXT_MODALITIES:
            bands = PRETEXT_MODALITIES[name]
        else:
            bands = valid
        if not bands:
            raise ValueError(f'No bands selected for modality {name!r}')
        for band in bands:
            if band not in valid:
                raise ValueError(
                    f'Unknown band {band!r} for modality {name!r}; '
                    f'valid bands are {list(valid)}'
                )
        if len(set(bands)) != len(bands):
            raise ValueError(f'Bands of {name!r} have duplicates: {list(bands)}')
        resolved[name] = bands
    return resolved


#: Releases of the MMEarth data, oldest first: ``'v001'``, the files of the ECCV 2024
#: paper (``data_1M_v001``, ``data_1M_v001_64``, ``data_100k_v001``), and ``'v1.0'``,
#: the release the reference loader reads since 2026-01-06 (vishalned/MMEarth-train
#: 1f368b3).
DATA_VERSIONS = ('v001', 'v1.0')

#: Root attribute of an MMEarth HDF5 file that records the release of its data
#: (the corpus builder writes it; the published v001 files have none).
VERSION_ATTRIBUTE = 'version'

#: The stored no-data placeholders that differ between releases, per release and
#: modality; every other modality stores no-data alike in every release. Each is
#: also no-data by the modality's own rules (a code outside ``class_values``, a
#: non-finite float), so a tile reads the same under the rules of either release.
VERSION_NODATA: Mapping[str, Mapping[str, float]] = {
    'v001': {'esa_worldcover': 255, 'era5': math.inf},
    'v1.0': {'esa_worldcover': 0, 'era5': math.nan},
}

# A release as written in a name or a record: v001, or v1.0 as v1.0, v1_0, v1-0,
# v1.0.0 or v100; not part of a longer word or number.
_VERSION = re.compile(
    r'(?<![A-Za-z0-9])v(001|1[._-]0(?:[._-]0)?|100)(?![A-Za-z0-9])', re.IGNORECASE
)


def data_version(text: str) -> str | None:
    """The release of the MMEarth data that a version string names.

    Args:
        text: a version as recorded or typed: ``'v001'`` or ``'001'`` for v001;
            ``'v1.0'``, ``'1.0'``, ``'v1_0'``, ``'v1-0'``, ``'v1.0.0'`` or
            ``'v100'`` for v1.0 (any case).

    Returns:
        The release, as in :data:`DATA_VERSIONS`, or None for any other text.
    """
    text = text.strip()
    match = _VERSION.fullmatch(text if text[:1] in 'vV' else f'v{text}')
    if match is None:
        return None
    return 'v001' if match.group(1) == '001' else 'v1.0'


def check_data_version(version: str, argument: str = 'version') -> str:
    """The release a version argument names, or a clear error.

    Args:
        version: a release, in any spelling :func:`data_version` reads.
        argument: the name of the argument, for the error.

    Returns:
        The release, as in :data:`DATA_VERSIONS`.

    Raises:
        ValueError: naming *argument* and the valid releases, for any other value.
    """
    release = data_version(version) if isinstance(version, str) else None
    if release is None:
        raise ValueError(
            f'{argument} must be one of {list(DATA_VERSIONS)} (the MMEarth data '
            f'release), got {version!r}'
        )
    return release


def split_data_version(name: str) -> tuple[str, str | None]:
    """The release a corpus folder or file name states, and the name without it.

    Args:
        name: e.g. ``'data_1M_v001_64'`` or ``'data_1M_v1.0_64'``.

    Returns:
        The name with its first release token replaced by ``'{version}'``
        (``'data_1M_{version}_64'`` for both examples), and that release as in
        :data:`DATA_VERSIONS`; the name itself and None when it states none.
    """
    match = _VERSION.search(name)
    if match is None:
        return name, None
    template = f'{name[: match.start()]}{{version}}{name[match.end() :]}'
    return template, data_version(match.group(0))


def nodata_values(name: str, version: str | None = None) -> tuple[float, ...]:
    """The no-data placeholders of a modality that :data:`VERSION_NODATA` lists.

    Args:
        name: modality name.
        version: a release (see :func:`check_data_version`); None for those of every
            release.

    Returns:
        The placeholders (none for modalities stored alike in every release), oldest
        release first.

    Raises:
        ValueError: for an unknown release.
    """
    versions = DATA_VERSIONS if version is None else (check_data_version(version),)
    return tuple(
        VERSION_NODATA[release][name]
        for release in versions
        if name in VERSION_NODATA[release]
    )
