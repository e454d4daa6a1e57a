#!/usr/bin/env bash
# Runs one launch on every worker of a TPU pod (or every GPU host): set-up,
# then `python -m launch.<name> --multihost <flags>`.
#
#   bash launch/run_tpu.sh <ttt|sample|pretrain> [flags ...]
#
# On a TPU VM pod, from your machine (copies the checkout to every worker and
# starts the same command on all of them; JAX finds the coordinator itself):
#
#   gcloud compute tpus tpu-vm scp --recurse --worker=all --zone=$ZONE \
#       . $TPU_NAME:~/ttt-jax
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --worker=all --zone=$ZONE \
#       --command="cd ~/ttt-jax && bash launch/run_tpu.sh ttt \
#       --config=configs/arc_ttt.py:gpu --workdir=\$HOME/run_ttt"
#
# Elsewhere (no TPU metadata, no Slurm) add --coordinator_address=HOST:PORT
# --num_processes=P --process_id=I on each host. Results are written by
# process 0 (worker 0's --workdir); pretrain checkpoints are written by all
# hosts through Orbax, so give pretrain a --workdir on a filesystem every host
# mounts at the same path.
#
# Environment:
#   TTT_VENV         virtualenv to create/use (default ~/ttt-venv)
#   TTT_JAX          the jax requirement to install (default 'jax[tpu]';
#                    'jax[cuda12]' on GPU hosts)
#   TTT_SKIP_SETUP=1 skip the installation (already installed)
#   TTT_PYTHON       the interpreter to run (default: the venv's python)
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: bash launch/run_tpu.sh <ttt|sample|pretrain> [flags ...]" >&2
  exit 2
fi
name=$1
shift
case "$name" in
  ttt|sample|pretrain) ;;
  *) echo "run_tpu.sh: unknown launch '$name' (ttt, sample, pretrain)" >&2
     exit 2 ;;
esac

cd "$(dirname "$0")/.."
venv=${TTT_VENV:-$HOME/ttt-venv}
if [[ "${TTT_SKIP_SETUP:-0}" != 1 ]]; then
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q -U pip
  "$venv/bin/pip" install -q -U "${TTT_JAX:-jax[tpu]}"
  "$venv/bin/pip" install -q -e '.[plots]'
fi
python=${TTT_PYTHON:-$venv/bin/python}
echo "run_tpu.sh on $(hostname): $python -m launch.$name --multihost $*" >&2
exec "$python" -m "launch.$name" --multihost "$@"
