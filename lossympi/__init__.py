"""LossyMPI: lossy UDP gradient transport with an MPI control plane."""
