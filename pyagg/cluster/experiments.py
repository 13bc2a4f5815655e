"""Former name of :mod:`pyagg.cluster.workloads` (models + data of ``--experiment``), kept as an alias.

Renamed so that it is not confused with the ``pyagg experiment`` command
(:mod:`pyagg.experiment`). Factories written as
``from pyagg.cluster.experiments import Experiment`` keep working.
"""

from .workloads import *  # noqa: F401,F403
from .workloads import __all__, _convert  # noqa: F401
