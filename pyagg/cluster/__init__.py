"""Byzantine training cluster: parameter server, workers, attacks, experiments.

- :mod:`.server`: the trusted parameter server (shared by every launcher)
- :mod:`.local`: local launcher (all workers simulated in one process)
- :mod:`.mpi`, :mod:`.worker`, :mod:`.transport`: the MPI cluster (each rank under
  :mod:`lossympi.guard`, the transport's rank supervisor)
- :mod:`.workloads`: models + data (digits MLP/CNN, synthetic), pluggable
- :mod:`.data`: iid / Dirichlet shards, reproducible mini-batches
- :mod:`.byzantine`: attacks wiring and the collusion channel
- :mod:`.checkpoint`, :mod:`.metrics`: outputs

The command line is ``pyagg train`` (:mod:`pyagg.train`) and ``pyagg
experiment`` (:mod:`pyagg.experiment`). Nothing here imports TensorFlow or
MPI at import time.
"""

from .config import TrainConfig

__all__ = ["TrainConfig"]
