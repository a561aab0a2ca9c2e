"""Airflow (Cloud Composer) DAG: launch the flex template every night, then load PostgreSQL.

Each night writes a new directory, named by when it was triggered, and passes
the output of the last *successful* run as --previous, so unchanged rows keep their vectors and a
failed night is never used (it has no manifest, which the job would refuse).
The very first run, with no earlier success, embeds everything. The load into
PostgreSQL + pgvector starts only once the night's manifest.json exists, and
the loader checks every file against it before touching the table.

Copy this file into the Composer environment's dags/ folder, set the Airflow
variables embed_project, embed_region, embed_bucket, embed_worker_image (the
image launch.sh pushed, REPOSITORY/gpu-worker:TAG, by its tag and not a digest:
the template's name is taken from the tag), embed_input (the shards, such as
gs://bucket/kb/*.parquet) and embed_table (optional: embed_carry_columns, such as
title,url, and embed_max_deleted_share, 0.5 when unset), and the database's
DSN as the key `dsn` of the Kubernetes Secret `embed-pgvector` where the load's
pod runs (Composer 3: `gcloud composer environments user-workloads-secrets
create`; Composer 2: `kubectl create secret` in composer-user-workloads). The load runs
in a pod of the worker image, which holds the loader: nothing of this project
(torch, Beam) is installed into Composer, whose own packages it could clash with.
"""

from __future__ import annotations

import pendulum
from airflow import DAG
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.providers.google.cloud.sensors.gcs import GCSObjectExistenceSensor
from airflow.timetables.trigger import CronTriggerTimetable

# launch.sh's BUCKET: a bucket, or a folder in one (gs://my-bucket/nightly), with or without a last "/".
BUCKET = "{{ var.value.embed_bucket.rstrip('/') }}"
# A night's folder is named by its run's data interval start, and --previous by the last successful
# run's, the one value Airflow gives of both: the folder that run wrote, whatever ran between (a manual
# run, a failed night). CronTriggerTimetable (below) makes it the moment each run was triggered: a
# manual run gets a folder of its own (the default cron timetable of Airflow 2 gives it the last
# scheduled interval, and `ds` named its folder by another date than the next night looked for).
NIGHT = "{{ data_interval_start | ts_nodash }}"
OUTPUT = BUCKET + "/embeddings/" + NIGHT
# The night's manifest.json as the sensor looks for it: the bucket's name, and the object's name in it.
MANIFEST_BUCKET = "{{ var.value.embed_bucket.split('/')[2] }}"
MANIFEST_OBJECT = (
    "{{ (var.value.embed_bucket.rstrip('/') ~ '/').split('/', 3)[3] }}embeddings/" + NIGHT + "/manifest.json"
)
# The flex template launch.sh built with the worker image's tag: a template and workers of one build.
TEMPLATE = BUCKET + "/templates/embed-job-{{ var.value.embed_worker_image.rsplit(':', 1)[-1] }}.json"
# The night's run into the table, by bash in the worker image; the DSN comes from a Kubernetes Secret
# into the pod's environment, so that its password is in neither the pod's spec nor the task's
# rendered fields, which Airflow stores and shows (a connection rendered into env_vars was in both).
DSN_SECRET = {"secret": "embed-pgvector", "key": "dsn"}
# A night that would delete more than half the table's ids fails here, the table unchanged (a fault
# upstream): set the variable embed_max_deleted_share to 1 for the night those deletions are meant.
LOAD_COMMAND = (
    'python -m pipeline.load pgvector --dsn "$PGVECTOR_DSN" --table {{ var.value.embed_table }} '
    "--max_deleted_share {{ var.value.get('embed_max_deleted_share', 0.5) }} " + OUTPUT
)
PREVIOUS = (
    "{% if prev_data_interval_start_success %}"
    + BUCKET
    + "/embeddings/{{ prev_data_interval_start_success | ts_nodash }}{% endif %}"
)
# The job's options, as the template's metadata.json declares them.
PARAMETERS = {
    "input": "{{ var.value.embed_input }}",  # the knowledge base's shards, such as gs://bucket/kb/*.parquet
    "output": OUTPUT,
    "previous": PREVIOUS,
    "carry_columns": "{{ var.value.get('embed_carry_columns', '') }}",  # such as title,url; none when unset
    # A worker whose GPU driver failed fails instead of embedding on its CPU; and the launcher, which
    # has no GPU, plans bfloat16 as launch.sh does, so both give the same fingerprint.
    "device": "cuda",
    # A night run again (its task cleared, or retried after Dataflow finished but the operator lost
    # track) replaces that night's finished output instead of failing on it; with --previous it embeds
    # only what changed, and it reads today's input, so loading it never takes the table back. A retry
    # launched while the first Dataflow job still runs takes the directory over: that job stops
    # without publishing (README, Reliability).
    "overwrite": "true",
}
# One NVIDIA L4 per g2-standard-8 worker, one SDK process per worker (see the README).
ENVIRONMENT = {
    "machineType": "g2-standard-8",
    "maxWorkers": 4,
    "tempLocation": BUCKET + "/temp",
    "stagingLocation": BUCKET + "/staging",
    "sdkContainerImage": "{{ var.value.embed_worker_image }}",
    "additionalExperiments": ["use_runner_v2", "no_use_multiple_sdk_containers"],
    "additionalPipelineOptions": [
        "number_of_worker_harness_threads=4",
        "dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    ],
}

with DAG(
    dag_id="nightly_embed",
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # a night's --previous is the night before: never two at once
    # A launch that failed on a passing error is tried once more; a retry of a night replaces its own
    # output (overwrite), and loading a run the table already holds changes nothing.
    default_args={"retries": 1, "retry_delay": pendulum.duration(minutes=15)},
) as dag:
    embed = DataflowStartFlexTemplateOperator(
        task_id="embed",
        project_id="{{ var.value.embed_project }}",
        location="{{ var.value.embed_region }}",
        body={
            "launchParameter": {
                "jobName": "embed-{{ ds_nodash }}",
                "containerSpecGcsPath": TEMPLATE,
                "parameters": PARAMETERS,
                "environment": ENVIRONMENT,
            }
        },
        wait_until_finished=True,
    )
    manifest = GCSObjectExistenceSensor(
        task_id="manifest",
        bucket=MANIFEST_BUCKET,
        object=MANIFEST_OBJECT,
        timeout=600,
        mode="reschedule",
    )
    # Composer 3 runs the pod in its user-workloads namespace; on Composer 2 also pass
    # namespace="composer-user-workloads" and config_file="/home/airflow/composer_kube_config".
    load = KubernetesPodOperator(
        task_id="load",
        name="embed-load",
        image="{{ var.value.embed_worker_image }}",
        cmds=["bash", "-c"],  # the image's entrypoint is Beam's worker boot
        arguments=[LOAD_COMMAND],
        secrets=[Secret(deploy_type="env", deploy_target="PGVECTOR_DSN", **DSN_SECRET)],
    )
    embed >> manifest >> load
