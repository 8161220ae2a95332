#!/usr/bin/env bash
# Runs topologies/two-hosts.toml under Open MPI: one troupe process on node0, one on node1.
# troupe uses mpirun only to start its processes; it does not use MPI for communication.
#
#   tools/mpi/run.sh                      train
#   tools/mpi/run.sh --steps 200          further arguments go to `troupe launch`
#   tools/mpi/run.sh --resume checkpoints continue from the last checkpoint
#
# What troupe takes from Open MPI:
#   OMPI_COMM_WORLD_RANK  this process's rank: rank i runs the actors of the topology's i-th
#                         [[hosts]] entry; rank 0 holds the coordinator and the data loader
#   OMPI_COMM_WORLD_SIZE  the world size: must equal the number of [[hosts]] entries
# Open MPI gives no rendezvous address, so it is passed here with --rendezvous HOST:PORT (or set
# TROUPE_RENDEZVOUS=HOST:PORT, exported to the processes with `mpirun -x TROUPE_RENDEZVOUS`). Without
# either, troupe uses the address of the topology's first [[hosts]] entry at port 29400
# (TROUPE_RENDEZVOUS_PORT changes the port). HOST must be where rank 0 runs: mpirun puts rank 0 on
# the first --host.
#
# On one machine nothing needs to be passed: two-hosts.toml puts both hosts at 127.0.0.1, so
#   mpirun -np 2 troupe launch topologies/two-hosts.toml
# works as it is.
#
# Notes:
#  - Processes tell each other where they listen at the rendezvous; the [[hosts]] addresses
#    only serve as the default rendezvous host (the first one) when --rendezvous is not given.
#  - `troupe` and the topology must be at the same path on every node, and the checkpoint
#    directory (--checkpoint-dir, default the topology's train.checkpoint_dir) on a filesystem
#    every node sees.
#  - As root, mpirun also needs --allow-run-as-root.
#  - mpirun answers SIGINT/SIGTERM by sending SIGTERM to every process and SIGKILL a few seconds
#    later, which may not leave rank 0 time to write its checkpoint. To stop with a checkpoint,
#    send SIGTERM to rank 0's process itself (exit 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

exec mpirun -np 2 --host node0,node1 \
  troupe launch topologies/two-hosts.toml --rendezvous node0:29400 "$@"
