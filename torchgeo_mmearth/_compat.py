"""The TorchGeo names that differ between the generations this package supports.

TorchGeo 0.9 moved its Lightning tasks from ``torchgeo.trainers`` to
``torchgeo.tasks``, dropped their ``Task`` suffix (``ClassificationTask`` became
``Classification``) and turned ``torchgeo.trainers`` into deprecated aliases
without ``torchgeo.trainers.utils``. Everything of TorchGeo's that this package
uses and that moved is imported here, under the 0.8 names, so that the rest of the
package keeps one code path and raises no deprecation warning on either
generation (0.8 / 0.9 and later):

* ``BaseTask``: ``torchgeo.trainers.BaseTask`` / ``torchgeo.tasks.BaseTask``;
* ``ClassificationTask``: ``torchgeo.trainers.ClassificationTask`` /
  ``torchgeo.tasks.Classification``;
* ``SemanticSegmentationTask``: ``torchgeo.trainers.SemanticSegmentationTask`` /
  ``torchgeo.tasks.SemanticSegmentation``;
* ``extract_backbone``, ``load_state_dict``: ``torchgeo.trainers.utils`` /
  ``torchgeo.tasks.utils``.

:data:`TASKS_MODULE` names the module that holds the tasks, for messages and
configs (:data:`TORCHGEO_TASKS` says whether it is ``torchgeo.tasks``);
:func:`task_arguments` passes a task's arguments on to the TorchGeo task of either
generation.
"""

import importlib.util
import inspect
from typing import Any

import torchgeo

#: Whether TorchGeo keeps its tasks in ``torchgeo.tasks`` (0.9+). ``make lint``
#: tells mypy its value (``--always-true`` / ``--always-false``), so that each
#: TorchGeo generation is type-checked against its own branch below.
TORCHGEO_TASKS = importlib.util.find_spec('torchgeo.tasks') is not None

if TORCHGEO_TASKS:
    from torchgeo.tasks import BaseTask
    from torchgeo.tasks import Classification as ClassificationTask
    from torchgeo.tasks import SemanticSegmentation as SemanticSegmentationTask
    from torchgeo.tasks.utils import extract_backbone, load_state_dict
else:
    from torchgeo.trainers import BaseTask, ClassificationTask, SemanticSegmentationTask
    from torchgeo.trainers.utils import extract_backbone, load_state_dict

TASKS_MODULE = 'torchgeo.tasks' if TORCHGEO_TASKS else 'torchgeo.trainers'

__all__ = (
    'TASKS_MODULE',
    'TORCHGEO_TASKS',
    'BaseTask',
    'ClassificationTask',
    'SemanticSegmentationTask',
    'extract_backbone',
    'load_state_dict',
    'task_arguments',
)


def task_arguments(torchgeo_task: type, /, **arguments: Any) -> dict[str, Any]:
    """The *arguments* that *torchgeo_task* takes, for ``super().__init__``.

    Our tasks declare the arguments of the newest TorchGeo (``labels``,
    ``pos_weight``, ``ignore_index`` of 0.9); with an older TorchGeo, whose task
    lacks one, it is dropped while it keeps its default (None).
    *torchgeo_task* is positional-only: our tasks have an argument ``task``.

    Args:
        torchgeo_task: TorchGeo's task class.
        **arguments: the arguments our task received.

    Returns:
        The arguments that *torchgeo_task* accepts.

    Raises:
        ValueError: if an argument that *torchgeo_task* does not take is not None.
    """
    accepted = inspect.signature(torchgeo_task).parameters
    unsupported = sorted(
        name
        for name, value in arguments.items()
        if name not in accepted and value is not None
    )
    if unsupported:
        raise ValueError(
            f'{torchgeo_task.__module__}.{torchgeo_task.__qualname__} of torchgeo '
            f'{torchgeo.__version__} has no argument {", ".join(unsupported)}; '
            'it needs torchgeo 0.9 or newer (Python 3.12+)'
        )
    return {name: value for name, value in arguments.items() if name in accepted}
