#!/usr/bin/env bash
# Runs selfreward_jax on a Cloud TPU VM or pod slice: create, install, copy a config, run on every
# worker, stream logs, tear down.
#
#   launch/tpu.sh [flags] STEP...        STEP: create install config run logs fetch delete, or up
#                                        (= create install config run logs)
#
# Flags (each also read from the environment variable in brackets):
#   --project P       GCP project                                   [PROJECT]
#   --zone Z          zone, e.g. us-central2-b                      [ZONE]
#   --accelerator A   accelerator type: v4-8, v4-128, v5litepod-16, v5p-64, ...  [ACCELERATOR_TYPE]
#   --name N          TPU VM name                                   [TPU_NAME]
#   --runtime R       TPU software version                          [RUNTIME_VERSION]
#   --config F        config file to copy and run (configs/*.py)    [CONFIG]
#   --workdir W       run directory: a path on the workers, or gs://bucket/dir (the run writes to
#                     a local directory on the workers; worker 0 pulls it from and pushes it to
#                     the bucket before and after the run, so a rerun resumes)       [WORKDIR]
#   --shared-dir D    a directory every worker mounts (NFS/Filestore, gcsfuse): the run uses it as
#                     its workdir directly (no rsync). Needed on multi-host slices, where every
#                     worker must see the files process 0 writes       [SHARED_DIR]
#   --args "..."      extra flags for selfreward_jax.main, e.g. "--stages=iter1"  [MAIN_ARGS]
#   --spot            create a Spot TPU                             [SPOT=1]
#   --dry-run         print every command instead of running it     [DRY_RUN=1]
#
# Multi-host slices: every worker runs the same command (--worker=all) with
# --config.distributed.initialize=yes; JAX finds the other hosts of a TPU slice by itself. Give
# --shared-dir: main refuses (exit 2) a workdir that not every worker sees.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HERE}/.." && pwd)"
# shellcheck source=launch/common.sh
source "${HERE}/common.sh"

PROJECT="${PROJECT:-}"
ZONE="${ZONE:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
TPU_NAME="${TPU_NAME:-selfreward}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/llama2_7b.py}"
WORKDIR="${WORKDIR:-}"
MAIN_ARGS="${MAIN_ARGS:-}"
SHARED_DIR="${SHARED_DIR:-}"
SPOT="${SPOT:-0}"
DRY_RUN="${DRY_RUN:-0}"
JAX_TPU_SPEC="${JAX_TPU_SPEC:-jax[tpu]>=0.10,<0.11}"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

steps=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) PROJECT="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCELERATOR_TYPE="$2"; shift 2 ;;
    --name) TPU_NAME="$2"; shift 2 ;;
    --runtime) RUNTIME_VERSION="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --args) MAIN_ARGS="$2"; shift 2 ;;
    --shared-dir) SHARED_DIR="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --*) die "unknown flag $1 (see --help)" ;;
    *) steps+=("$1"); shift ;;
  esac
done
export DRY_RUN
[[ ${#steps[@]} -gt 0 ]] || { usage >&2; die "no step given"; }
require PROJECT "${PROJECT}" --project
require ZONE "${ZONE}" --zone
WORKDIR="${WORKDIR:-workdir/$(basename "${CONFIG}" .py)}"

# the run's directory on the workers (relative paths are under the remote home directory)
if [[ -n "${SHARED_DIR}" ]]; then
  [[ "${WORKDIR}" != gs://* ]] || die "--shared-dir and a gs:// --workdir exclude each other"
  LOCAL_WORKDIR="${SHARED_DIR}"
elif [[ "${WORKDIR}" == gs://* ]]; then
  LOCAL_WORKDIR="workdir/${TPU_NAME}"
else
  LOCAL_WORKDIR="${WORKDIR}"
fi
REMOTE_CONFIG="selfreward_run_config.py"
LOG="selfreward_run.log"

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--project="${PROJECT}" --zone="${ZONE}")
WORKER_NUMBER="curl -s -H Metadata-Flavor:Google \
http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"

on_workers() {  # on_workers WORKERS COMMAND: runs a shell command on the TPU's workers (all, 0, ...)
  run "${GCLOUD_TPU[@]}" ssh "${TPU_NAME}" "${WHERE[@]}" --worker="$1" --command="$2"
}

copy_to_workers() {  # copy_to_workers LOCAL REMOTE: scp to every worker
  run "${GCLOUD_TPU[@]}" scp "$1" "${TPU_NAME}:$2" "${WHERE[@]}" --worker=all
}

step_create() {
  local extra=()
  [[ "${SPOT}" == "1" ]] && extra+=(--spot)
  run "${GCLOUD_TPU[@]}" create "${TPU_NAME}" "${WHERE[@]}" --accelerator-type="${ACCELERATOR_TYPE}" \
    --version="${RUNTIME_VERSION}" "${extra[@]}"
}

step_install() {
  # the package as this checkout has it (committed files), on every worker
  local tarball="/tmp/selfreward_jax-src.tar.gz"
  run git -C "${REPO_ROOT}" archive --format=tar.gz --output="${tarball}" HEAD
  copy_to_workers "${tarball}" selfreward_jax-src.tar.gz
  on_workers all "set -e; rm -rf selfreward_jax && mkdir selfreward_jax && \
tar -xzf selfreward_jax-src.tar.gz -C selfreward_jax && python3 -m venv venv && \
venv/bin/pip install -q -U pip && venv/bin/pip install -q '${JAX_TPU_SPEC}' -e ./selfreward_jax && \
venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0])'"
}

step_config() {
  local src="${CONFIG}"
  [[ -f "${src}" ]] || src="${REPO_ROOT}/${CONFIG}"
  [[ -f "${src}" || "${DRY_RUN}" == "1" ]] || die "config ${CONFIG} not found"
  copy_to_workers "${src}" "${REMOTE_CONFIG}"
}

step_run() {
  # detached (nohup) so a dropped ssh does not kill the run; `logs` follows worker 0's log
  local push=""
  if [[ "${WORKDIR}" == gs://* ]]; then
    on_workers 0 "mkdir -p ${LOCAL_WORKDIR} && gcloud storage rsync -r ${WORKDIR} ${LOCAL_WORKDIR} || true"
    push="; rc=\$?; if [ \"\$(${WORKER_NUMBER})\" = 0 ]; then gcloud storage rsync -r ${LOCAL_WORKDIR} ${WORKDIR}; fi; exit \$rc"
  fi
  on_workers all "nohup bash -c 'venv/bin/python -m selfreward_jax.main \
--config=${REMOTE_CONFIG} --workdir=${LOCAL_WORKDIR} --config.distributed.initialize=yes\
${MAIN_ARGS:+ ${MAIN_ARGS}}${push}' > ${LOG} 2>&1 &"
}

step_logs() {
  on_workers 0 "tail -n +1 -F ${LOG}"
}

step_fetch() {  # copies worker 0's run directory here (with a gs:// workdir, use the bucket)
  run "${GCLOUD_TPU[@]}" scp --recurse "${TPU_NAME}:${LOCAL_WORKDIR}" \
    "./$(basename "${LOCAL_WORKDIR}")" "${WHERE[@]}" --worker=0
}

step_delete() {
  run "${GCLOUD_TPU[@]}" delete "${TPU_NAME}" "${WHERE[@]}" --quiet
}

for s in "${steps[@]}"; do
  case "${s}" in
    create|install|config|run|logs|fetch|delete) "step_${s}" ;;
    up) step_create; step_install; step_config; step_run; step_logs ;;
    *) die "unknown step ${s}; steps: create install config run logs fetch delete up" ;;
  esac
done
