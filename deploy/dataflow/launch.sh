#!/usr/bin/env bash
# Build and launch the embedding job as a Dataflow flex template with one GPU per worker.
#
#   deploy/dataflow/launch.sh build     # worker and launcher images, then the template spec
#   deploy/dataflow/launch.sh run --input='gs://BUCKET/kb/*.parquet' \
#       --output=gs://BUCKET/embeddings/2026-11-22 [--previous=gs://BUCKET/embeddings/2026-11-21] [job options]
#
# Required in the environment: PROJECT, and BUCKET (gs://...) for the template,
# staging and temp files. Optional: REGION, TAG, REPOSITORY, GPU_TYPE, GPU_COUNT,
# MACHINE_TYPE, HARNESS_THREADS, MAX_WORKERS. DRY_RUN=1 prints each command
# instead of running it.
#
# Workers and the GPU: Dataflow starts one SDK process per vCPU unless told
# otherwise, and each would load its own model copy and CUDA context onto the one
# GPU. no_use_multiple_sdk_containers keeps one process per worker; its
# HARNESS_THREADS threads share that process's model, so Parquet reads and
# tokenisation overlap the GPU's work without oversubscribing it. With
# GPU_COUNT > 1 the process loads one model copy per GPU and hands them to its
# threads evenly (HARNESS_THREADS: four, or two per GPU beyond two GPUs), so every GPU is used.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${PROJECT:?set PROJECT to the Google Cloud project}"
: "${BUCKET:?set BUCKET to a gs:// bucket for the template, staging and temp files}"
BUCKET=${BUCKET%/}  # gs://my-bucket/ as gs://my-bucket: its objects are named below it, not below "/"
REGION=${REGION:-us-central1}
TAG=${TAG:-latest}
REPOSITORY=${REPOSITORY:-$REGION-docker.pkg.dev/$PROJECT/embed}
WORKER_IMAGE=$REPOSITORY/gpu-worker:$TAG
LAUNCHER_IMAGE=$REPOSITORY/launcher:$TAG
TEMPLATE=$BUCKET/templates/embed-job-$TAG.json
GPU_TYPE=${GPU_TYPE:-nvidia-l4}
GPU_COUNT=${GPU_COUNT:-1}
MACHINE_TYPE=${MACHINE_TYPE:-g2-standard-8}
HARNESS_THREADS=${HARNESS_THREADS:-$((GPU_COUNT > 2 ? 2 * GPU_COUNT : 4))}
MAX_WORKERS=${MAX_WORKERS:-4}

run() {
  if [[ -n ${DRY_RUN:-} ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

case ${1:-} in
  build)
    run docker build -f deploy/gpu-worker/Dockerfile -t "$WORKER_IMAGE" .
    run docker push "$WORKER_IMAGE"
    run docker build -f deploy/dataflow/Dockerfile -t "$LAUNCHER_IMAGE" .
    run docker push "$LAUNCHER_IMAGE"
    run gcloud dataflow flex-template build "$TEMPLATE" \
      --project="$PROJECT" --image="$LAUNCHER_IMAGE" --sdk-language=PYTHON \
      --metadata-file=deploy/dataflow/metadata.json
    ;;
  run)
    shift
    parameters=()
    for arg in "$@"; do
      if [[ $arg != --*=* ]]; then
        echo "job options are --name=value, got: $arg" >&2
        exit 2
      fi
      parameters+=("${arg#--}")
    done
    # GPU workers: a worker whose driver failed must fail, not embed on its CPU for hours.
    if [[ " ${parameters[*]} " != *" device="* ]]; then
      parameters+=("device=cuda")
    fi
    # ^~^ makes ~ the separator, so values may hold commas (globs, column lists).
    run gcloud dataflow flex-template run "embed-$(date -u +%Y%m%d-%H%M%S)" \
      --project="$PROJECT" --region="$REGION" \
      --template-file-gcs-location="$TEMPLATE" \
      --staging-location="$BUCKET/staging" --temp-location="$BUCKET/temp" \
      --worker-machine-type="$MACHINE_TYPE" --max-workers="$MAX_WORKERS" \
      --additional-experiments=use_runner_v2,no_use_multiple_sdk_containers \
      --additional-pipeline-options="sdk_container_image=$WORKER_IMAGE,number_of_worker_harness_threads=$HARNESS_THREADS,dataflow_service_options=worker_accelerator=type:$GPU_TYPE;count:$GPU_COUNT;install-nvidia-driver" \
      --parameters="^~^$(IFS='~'; echo "${parameters[*]}")"
    ;;
  *)
    echo "usage: $0 build | run --input=gs://... --output=gs://... [--previous=gs://...] [job options]" >&2
    exit 2
    ;;
esac
