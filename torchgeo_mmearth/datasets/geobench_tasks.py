"""The six GEO-Bench v1.0 tasks MMEarth reports: what :class:`GeoBench` knows of each.

GEO-Bench (Lacoste et al., 2023, https://arxiv.org/abs/2306.03831) keeps each
task's description in a pickled ``task_specs.pkl`` that only the ``geobench``
package can read; :data:`TASKS` holds what MMEarth's evaluation needs of it.
"""

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ['TASKS', 'GeoBenchTask', 'resolve_task']


@dataclass(frozen=True)
class GeoBenchTask:
    """What :class:`GeoBench` needs to know about one task.

    Attributes:
        name: the task name, e.g. ``'m-eurosat'``.
        benchmark: ``'classification_v1.0'`` or ``'segmentation_v1.0'``.
        folders: task folder names, tried in order.
        task_type: ``'multiclass'``, ``'multilabel'`` or ``'segmentation'``.
        num_classes: number of classes.
        size: native image side in pixels.
        class_names: class names, in label order.
        reflectance: whether pixels are reflectances (digital numbers / 10 000).
    """

    name: str
    benchmark: str
    folders: tuple[str, ...]
    task_type: str
    num_classes: int
    size: int
    class_names: tuple[str, ...]
    reflectance: bool = False


_BIGEARTHNET_CLASSES = (
    'Continuous urban fabric',
    'Discontinuous urban fabric',
    'Industrial or commercial units',
    'Road and rail networks and associated land',
    'Port areas',
    'Airports',
    'Mineral extraction sites',
    'Dump sites',
    'Construction sites',
    'Green urban areas',
    'Sport and leisure facilities',
    'Non-irrigated arable land',
    'Permanently irrigated land',
    'Rice fields',
    'Vineyards',
    'Fruit trees and berry plantations',
    'Olive groves',
    'Pastures',
    'Annual crops associated with permanent crops',
    'Complex cultivation patterns',
    (
        'Land principally occupied by agriculture, with significant areas of '
        'natural vegetation'
    ),
    'Agro-forestry areas',
    'Broad-leaved forest',
    'Coniferous forest',
    'Mixed forest',
    'Natural grassland',
    'Moors and heathland',
    'Sclerophyllous vegetation',
    'Transitional woodland/shrub',
    'Beaches, dunes, sands',
    'Bare rock',
    'Sparsely vegetated areas',
    'Burnt areas',
    'Inland marshes',
    'Peatbogs',
    'Salt marshes',
    'Salines',
    'Intertidal flats',
    'Water courses',
    'Water bodies',
    'Coastal lagoons',
    'Estuaries',
    'Sea and ocean',
)
_SO2SAT_CLASSES = (
    'Compact high rise',
    'Compact mid rise',
    'Compact low rise',
    'Open high rise',
    'Open mid rise',
    'Open low rise',
    'Lightweight low rise',
    'Large low rise',
    'Sparsely built',
    'Heavy industry',
    'Dense trees',
    'Scattered trees',
    'Bush, scrub',
    'Low plants',
    'Bare rock or paved',
    'Bare soil or sand',
    'Water',
)
_EUROSAT_CLASSES = (
    'Annual Crop',
    'Forest',
    'Herbaceous Vegetation',
    'Highway',
    'Industrial Buildings',
    'Pasture',
    'Permanent Crop',
    'Residential Buildings',
    'River',
    'Sea & Lake',
)

#: The six GEO-Bench v1.0 tasks MMEarth reports. Class names are those of the
#: converters (TorchGeo's EuroSAT, So2Sat and BigEarthNet-43 lists, and the lists
#: of GEO-Bench's brick-kiln, Benin cashew and South Africa crop-type converters).
TASKS: Mapping[str, GeoBenchTask] = {
    task.name: task
    for task in (
        GeoBenchTask(
            'm-bigearthnet',
            'classification_v1.0',
            ('m-bigearthnet',),
            'multilabel',
            43,
            120,
            _BIGEARTHNET_CLASSES,
        ),
        GeoBenchTask(
            'm-so2sat',
            'classification_v1.0',
            ('m-so2sat',),
            'multiclass',
            17,
            32,
            _SO2SAT_CLASSES,
            reflectance=True,
        ),
        GeoBenchTask(
            'm-eurosat',
            'classification_v1.0',
            ('m-eurosat',),
            'multiclass',
            10,
            64,
            _EUROSAT_CLASSES,
        ),
        GeoBenchTask(
            'm-brick-kiln',
            'classification_v1.0',
            ('m-brick-kiln',),
            'multiclass',
            2,
            64,
            ('not brick kiln', 'brick kiln'),
        ),
        GeoBenchTask(
            'm-cashew-plantation',
            'segmentation_v1.0',
            ('m-cashew-plant', 'm-cashew-plantation'),
            'segmentation',
            7,
            256,
            (
                'no data',
                'well-managed plantation',
                'poorly-managed plantation',
                'non-plantation',
                'residential',
                'background',
                'uncertain',
            ),
        ),
        GeoBenchTask(
            'm-SA-crop-type',
            'segmentation_v1.0',
            ('m-SA-crop-type',),
            'segmentation',
            10,
            256,
            (
                'No Data',
                'Lucerne/Medics',
                'Planted pastures (perennial)',
                'Fallow',
                'Wine grapes',
                'Weeds',
                'Small grain grazing',
                'Wheat',
                'Canola',
                'Rooibos',
            ),
        ),
    )
}
# Other spellings of task names in use (MMEarth-train calls it m-cashew-plant).
_ALIASES = {'m-cashew-plant': 'm-cashew-plantation'}


def resolve_task(task: str) -> GeoBenchTask:
    """The description of a task, by name.

    Args:
        task: a key of :data:`TASKS`, or ``'m-cashew-plant'`` (MMEarth-train's and
            GEO-Bench v1.0's folder name of m-cashew-plantation).

    Returns:
        The task.

    Raises:
        ValueError: for an unknown task, listing the valid ones.
    """
    name = _ALIASES.get(task, task)
    if name not in TASKS:
        raise ValueError(
            f'Unknown task {task!r}; valid tasks are {list(TASKS)} (the GEO-Bench '
            'v1.0 tasks reported by MMEarth)'
        )
    return TASKS[name]
