import math

import pytest

from torchgeo_mmearth.modalities import (
    DATA_VERSIONS,
    MODALITIES,
    VERSION_NODATA,
    Kind,
    check_data_version,
    data_version,
    nodata_values,
    split_data_version,
)


def test_release_placeholders() -> None:
    assert DATA_VERSIONS == ('v001', 'v1.0') == tuple(VERSION_NODATA)
    assert VERSION_NODATA['v001'] == {'esa_worldcover': 255, 'era5': math.inf}
    assert VERSION_NODATA['v1.0']['esa_worldcover'] == 0
    assert math.isnan(VERSION_NODATA['v1.0']['era5'])


@pytest.mark.parametrize(('version', 'table'), list(VERSION_NODATA.items()))
def test_every_placeholder_is_nodata_by_the_modality_rules(
    version: str, table: dict[str, float]
) -> None:
    """Each release reads correctly under the rules of the other (or none)."""
    for name, value in table.items():
        modality = MODALITIES[name]
        if modality.kind is Kind.CATEGORICAL:
            assert value not in modality.class_values, (version, name)
        else:
            low, high = modality.valid_range
            assert not (math.isfinite(value) and low <= value <= high), (version, name)


def test_nodata_values() -> None:
    assert nodata_values('esa_worldcover') == (255, 0)
    assert nodata_values('esa_worldcover', 'v001') == (255,)
    assert nodata_values('esa_worldcover', '1.0') == (0,)
    (inf, nan) = nodata_values('era5')
    assert inf == math.inf and math.isnan(nan)
    assert nodata_values('sentinel2') == nodata_values('aster', 'v1.0') == ()
    with pytest.raises(ValueError, match=r"version must be one of .* got 'v3'"):
        nodata_values('era5', 'v3')


@pytest.mark.parametrize(
    ('text', 'expected'),
    [
        ('v001', 'v001'),
        ('001', 'v001'),
        (' V001 ', 'v001'),
        ('v1.0', 'v1.0'),
        ('1.0', 'v1.0'),
        ('v1_0', 'v1.0'),
        ('v1-0', 'v1.0'),
        ('v1.0.0', 'v1.0'),
        ('v100', 'v1.0'),
        ('v10', None),
        ('v1', None),
        ('v2.0', None),
        ('1.05', None),
        ('', None),
    ],
)
def test_data_version(text: str, expected: str | None) -> None:
    assert data_version(text) == expected


def test_check_data_version() -> None:
    assert check_data_version('v1_0') == 'v1.0'
    with pytest.raises(
        ValueError,
        match=r"release must be one of \['v001', 'v1\.0'\] \(the MMEarth data "
        r"release\), got 'v2'",
    ):
        check_data_version('v2', 'release')


@pytest.mark.parametrize(
    ('name', 'expected'),
    [
        ('data_1M_v001', ('data_1M_{version}', 'v001')),
        ('data_1M_v001_64', ('data_1M_{version}_64', 'v001')),
        ('data_1M_v1.0_64', ('data_1M_{version}_64', 'v1.0')),
        ('data_1M_v1_0_64', ('data_1M_{version}_64', 'v1.0')),
        ('data_100k_v100', ('data_100k_{version}', 'v1.0')),
        ('data_bigearthnet_demo', ('data_bigearthnet_demo', None)),
        ('data_dev001', ('data_dev001', None)),  # part of a word
        ('data_x_v1.05', ('data_x_v1.05', None)),
    ],
)
def test_split_data_version(name: str, expected: tuple[str, str | None]) -> None:
    assert split_data_version(name) == expected
