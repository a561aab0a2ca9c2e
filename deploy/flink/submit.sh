#!/usr/bin/env bash
# Submit the job to a Flink cluster whose task managers run Beam's Python SDK
# worker pool as a sidecar on port 50000 (deploy/flink/flink-deployment.yaml).
#
#   FLINK_MASTER=embed-flink-rest:8081 deploy/flink/submit.sh \
#       --input='gs://BUCKET/kb/*.parquet' --output=gs://BUCKET/embeddings/2026-11-22 [job options]
#
# Paths must be on storage every task manager reaches (gs://...), not local disks.
# Beam's FlinkRunner builds one jar of its Flink job server (a jar it downloads
# from Maven Central on first use; set FLINK_JOB_SERVER_JAR to a local copy where
# the launching machine has no internet), the pipeline and the files it stages, and
# uploads it through Flink's REST API (--flink_submit_uber_jar): task managers then
# read nothing from the launching machine's disk, where a job server would leave
# the staged files, and that machine needs no Java. DRY_RUN=1 prints the command.
# The job runs with --device=cuda (task managers with GPUs; a worker without a working
# GPU then fails instead of embedding on its CPU); DEVICE=cpu for a CPU-only cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${FLINK_MASTER:?set FLINK_MASTER to the JobManager REST address, host:port}"
cmd=(
  python -m pipeline.run
  --runner=FlinkRunner
  --flink_master="$FLINK_MASTER"
  --flink_version="${FLINK_VERSION:-1.20}"
  --flink_submit_uber_jar
  --parallelism="${PARALLELISM:-2}"
  --environment_type=EXTERNAL
  --environment_config="${WORKER_POOL:-localhost:50000}"
  --device="${DEVICE:-cuda}"
)
if [[ -n ${FLINK_JOB_SERVER_JAR:-} ]]; then
  cmd+=(--flink_job_server_jar="$FLINK_JOB_SERVER_JAR")
fi
cmd+=("$@")

if [[ -n ${DRY_RUN:-} ]]; then
  printf '%q ' "${cmd[@]}"
  echo
else
  "${cmd[@]}"
fi
