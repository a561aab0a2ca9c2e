"""deploy/: everything about the artefacts that can be checked without Docker, a cloud or Flink.

The files parse; the template declares exactly the job's options; the launch and submit
scripts, run in their dry mode, produce option sets that Beam's DataflowRunner and
FlinkRunner validators accept; the images pin the launcher's Python and Beam; and the
images' own check commands and the launcher's command run here.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import apache_beam
import jinja2
import jinja2.sandbox
import pytest
import yaml
from apache_beam.options.pipeline_options import (
    DebugOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PortableOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
from apache_beam.runners.portability.flink_runner import FlinkRunner

from pipeline.load import command_line
from pipeline.options import EmbedOptions, UsageError, parse_command_line
from pipeline.run import make_options
from samples.knowledge_base import write_shards
from tests.conftest import JOB, ROOT

DEPLOY = ROOT / "deploy"
GPU = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"


def _dry_run(script: str, *args: str, **env: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(DEPLOY / script), *args],
        env={**os.environ, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _requirement(name: str) -> str:
    return re.search(rf"^{re.escape(name)}(?:\[\w+\])?==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)[1]


def _dockerfile_args(path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), re.M))


def _metadata_names() -> list[str]:
    return [p["name"] for p in json.loads((DEPLOY / "dataflow" / "metadata.json").read_text())["parameters"]]


@pytest.mark.parametrize(
    ("name", "taken", "refused"),
    [
        ("device", ["auto", "cpu", "cuda", "cuda:1"], ["gpu", "cuda:", "CUDA", "cuda:x"]),
        ("token_budget", ["1", "131072", "+512"], ["0", "-1", "lots", "1.5", ""]),
        ("chunk_overlap", ["0", "32"], ["-1", "32 tokens"]),
        ("target_file_mb", ["128", "0.5", ".5", "1.", "1e3", "2.5E-1"], ["-1", "big", "1e", "inf"]),
        ("progress_interval", ["0", "30", "2.5"], ["-5", "nan", "inf"]),
    ],
)
def test_flex_template_refuses_a_mistyped_value_as_the_job_would(name, taken, refused):
    """Without a regex a template parameter takes anything: `token_budget=lots` or `device=gpu` launched a
    launcher that failed minutes later (exit 2) instead of the launch failing at once."""
    parameter = next(
        p for p in json.loads((DEPLOY / "dataflow" / "metadata.json").read_text())["parameters"] if p["name"] == name
    )
    [regex] = parameter["regexes"]
    for value in taken:
        assert re.search(regex, value), value
        options = parse_command_line(["--input", "x", "--output", "y", f"--{name}={value}"]).view_as(EmbedOptions)
        assert str(getattr(options, name)) == value or float(getattr(options, name)) == float(value)
    assert not [value for value in refused if re.search(regex, value)]


def test_flex_template_metadata_is_generated_from_the_jobs_options():
    generated = subprocess.run(
        [sys.executable, str(DEPLOY / "dataflow" / "metadata.py")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert generated == (DEPLOY / "dataflow" / "metadata.json").read_text()
    parameters = json.loads(generated)["parameters"]
    assert [p["name"] for p in parameters if not p["isOptional"]] == ["input", "output"]
    assert all(p["helpText"] for p in parameters)
    declared = argparse.ArgumentParser()
    EmbedOptions._add_argparse_args(declared)
    # Every option but --plan_only, which prints a plan a template launch has nowhere to show, and
    # --worker_start_timeout, of a job service in the launcher's process, which Dataflow never runs.
    left_out = ("help", "plan_only", "worker_start_timeout")
    assert [p["name"] for p in parameters] == [a.dest for a in declared._actions if a.dest not in left_out]


def test_dataflow_launch_sets_the_gpu_and_passes_options_dataflow_validates():
    (command,) = _dry_run(
        "dataflow/launch.sh", "run", "--input=gs://b/kb/*.parquet", "--output=gs://b/embeddings/2026-11-22",
        "--previous=gs://b/embeddings/2026-11-21", "--carry_columns=title,kind",
        PROJECT="my-project", BUCKET="gs://kb-nightly",
    )  # fmt: skip
    words = shlex.split(command)
    assert words[:4] == ["gcloud", "dataflow", "flex-template", "run"]
    flags = dict(word[2:].split("=", 1) for word in words[5:])
    parameters = flags.pop("parameters").removeprefix("^~^").split("~")
    assert parameters == [
        "input=gs://b/kb/*.parquet",
        "output=gs://b/embeddings/2026-11-22",
        "previous=gs://b/embeddings/2026-11-21",
        "carry_columns=title,kind",
        "device=cuda",  # a GPU job never falls back to CPU silently
    ]
    # What the Dataflow service hands the launcher: the parameters, the gcloud flags and the extra options.
    argv = [f"--{p}" for p in parameters] + [
        "--runner=DataflowRunner",
        "--dry_run=True",  # Beam's: validate without asking Cloud Storage about the buckets
        f"--project={flags['project']}",
        f"--region={flags['region']}",
        f"--temp_location={flags['temp-location']}",
        f"--staging_location={flags['staging-location']}",
        f"--machine_type={flags['worker-machine-type']}",
        f"--max_num_workers={flags['max-workers']}",
        *(f"--experiments={e}" for e in flags["additional-experiments"].split(",")),
        *(f"--{option}" for option in flags["additional-pipeline-options"].split(",")),
    ]
    options = parse_command_line(argv)
    assert PipelineOptionsValidator(options, DataflowRunner()).validate() == []
    worker = options.view_as(WorkerOptions)
    assert worker.sdk_container_image == "us-central1-docker.pkg.dev/my-project/embed/gpu-worker:latest"
    assert worker.machine_type == "g2-standard-8"
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [GPU]
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(options.view_as(DebugOptions).experiments)


def test_dataflow_build_uses_the_files_in_this_repository():
    commands = [
        shlex.split(line) for line in _dry_run("dataflow/launch.sh", "build", PROJECT="p", BUCKET="gs://kb-nightly")
    ]
    dockerfiles = [words[words.index("-f") + 1] for words in commands if words[:2] == ["docker", "build"]]
    assert dockerfiles == ["deploy/gpu-worker/Dockerfile", "deploy/dataflow/Dockerfile"]
    (template,) = [words for words in commands if words[:3] == ["gcloud", "dataflow", "flex-template"]]
    assert "--metadata-file=deploy/dataflow/metadata.json" in template
    assert all((ROOT / path).is_file() for path in [*dockerfiles, "deploy/dataflow/metadata.json"])


def test_the_installed_package_holds_every_package_of_the_job(tmp_path):
    """What `pip install .` (the images) and --setup_file (Dataflow's staging) install: every package
    directory of the source, subpackages too (encoder.modules was left out: workers could not load a model)."""
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ and egg-info beside setup.py
    source.mkdir()
    shutil.copy(ROOT / "setup.py", source / "setup.py")
    top = ("pipeline", "transforms", "schemas", "encoder", "samples")
    for name in top:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    built = subprocess.run([*wheel, str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (built_wheel,) = tmp_path.glob("*.whl")
    packaged = {name for name in zipfile.ZipFile(built_wheel).namelist() if name.endswith("/__init__.py")}
    expected = {p.relative_to(ROOT).as_posix() for name in top for p in (ROOT / name).rglob("__init__.py")}
    assert packaged == expected


def test_images_pin_the_launchers_python_beam_and_torch():
    python = "{}.{}".format(*sys.version_info[:2])
    worker = _dockerfile_args(DEPLOY / "gpu-worker" / "Dockerfile")
    assert worker["PYTHON_VERSION"] == python
    assert worker["BEAM_VERSION"] == _requirement("apache-beam") == apache_beam.__version__
    assert worker["TORCH_IMAGE"].startswith(f"pytorch/pytorch:{_requirement('torch')}-cuda")
    text = (DEPLOY / "gpu-worker" / "Dockerfile").read_text()
    assert "COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    launcher = _dockerfile_args(DEPLOY / "dataflow" / "Dockerfile")
    assert launcher["PYTHON_TAG"] == python.replace(".", "")
    # Another torch than requirements.txt's would have pip replace the CPU build with PyPI's CUDA one.
    assert launcher["TORCH_VERSION"] == _requirement("torch")
    assert (
        "torch==${TORCH_VERSION} --index-url https://download.pytorch.org/whl/cpu"
        in (DEPLOY / "dataflow" / "Dockerfile").read_text()
    )


def test_worker_image_check_runs_here(tmp_path):
    """The image's last build step plans a job with the baked-in model; the same commands run here."""
    text = (DEPLOY / "gpu-worker" / "Dockerfile").read_text()
    check = re.search(r"^RUN (python -m samples\.knowledge_base.*?)$(?!\n    )", text, re.M | re.S)[1]
    command = check.replace("\\\n", " ").replace("/tmp/", f"{tmp_path}/")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout[result.stdout.index("{") :])
    assert (plan["plan_only"], len(plan["input_files"]), plan["model"]["dim"]) == (True, 1, 384)
    assert not (tmp_path / "kb-out").exists()  # a plan writes nothing


def test_flex_template_launcher_command_runs_with_flex_style_parameters(tmp_path):
    """The launcher runs FLEX_TEMPLATE_PYTHON_PY_FILE with every parameter as --name=value."""
    py_file = re.search(
        r"FLEX_TEMPLATE_PYTHON_PY_FILE=/template/(\S+)", (DEPLOY / "dataflow" / "Dockerfile").read_text()
    )
    write_shards(tmp_path / "kb", rows=5, shards=1)
    result = subprocess.run(
        [sys.executable, str(ROOT / py_file[1]), f"--input={tmp_path}/kb/*.parquet", f"--output={tmp_path}/out"]
        + ["--previous=", "--overwrite=false", "--plan_only=true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["output"], plan["previous"], len(plan["input_files"])) == (f"{tmp_path}/out", None, 1)


def test_a_dataflow_run_without_the_worker_image_is_refused_before_it_starts(tmp_path, monkeypatch):
    """Dataflow's default workers hold Beam alone: each failed on its first bundle, minutes after the
    job started, with Python's `No module named 'transforms'`."""
    write_shards(tmp_path / "kb", rows=5, shards=1)
    dataflow = [
        f"--input={tmp_path}/kb/*.parquet", f"--output={tmp_path}/out", "--runner=DataflowRunner",
        "--project=p", "--region=us-central1", "--temp_location=gs://b/temp",
    ]  # fmt: skip
    result = subprocess.run([*JOB, *dataflow], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --runner DataflowRunner: Dataflow's default workers have neither this project nor torch; pass "
        "--sdk_container_image (the worker image deploy/dataflow/launch.sh builds and passes), or "
        "--setup_file ./setup.py"
    )
    assert not (tmp_path / "out").exists()
    # Any of Beam's ways of giving the workers the project passes.
    for given in (
        "--sdk_container_image=registry.example/embed/gpu-worker:v7",
        "--worker_harness_container_image=registry.example/embed/gpu-worker:v7",
        "--sdk_harness_container_image_overrides=.*python.*,registry.example/embed/gpu-worker:v7",
        "--setup_file=./setup.py",
        "--extra_package=dist/parquet_embedding_job-0.1.0-py3-none-any.whl",
    ):
        assert make_options([*dataflow, given]).view_as(StandardOptions).runner == "DataflowRunner"
    # A classic template made without them is refused; a flex template's launcher (its image sets
    # FLEX_TEMPLATE_PYTHON_PY_FILE) is not, since the launch's environment may name the image.
    classic = [*dataflow, "--template_location=gs://b/templates/embed"]
    with pytest.raises(UsageError, match="Dataflow's default workers have neither this project nor torch"):
        make_options(classic)
    monkeypatch.setenv("FLEX_TEMPLATE_PYTHON_PY_FILE", "/template/pipeline/run.py")
    assert make_options(classic).view_as(StandardOptions).runner == "DataflowRunner"


def test_flink_submit_and_kubernetes_manifest_agree_and_flink_validates():
    (command,) = _dry_run(
        "flink/submit.sh", "--input=gs://b/kb/*.parquet", "--output=gs://b/embeddings/2026-11-22",
        FLINK_MASTER="embed-flink-rest:8081",
    )  # fmt: skip
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "pipeline.run"]
    options = parse_command_line(words[3:])
    assert PipelineOptionsValidator(options, FlinkRunner()).validate() == []
    flink = options.view_as(FlinkRunnerOptions)
    assert flink.flink_master == "embed-flink-rest:8081"
    # Staged files travel in the uploaded jar: a job server would keep them on this machine's disk,
    # which the task managers do not reach.
    assert flink.flink_submit_uber_jar
    assert flink.flink_version in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    portable = options.view_as(PortableOptions)
    assert portable.environment_type == "EXTERNAL"

    deployment = yaml.safe_load((DEPLOY / "flink" / "flink-deployment.yaml").read_text())
    assert deployment["kind"] == "FlinkDeployment"
    assert deployment["spec"]["flinkVersion"] == "v" + flink.flink_version.replace(".", "_")
    assert int(deployment["spec"]["flinkConfiguration"]["rest.server.max-content-length"]) >= 500 << 20
    (sidecar,) = deployment["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
    assert sidecar["args"] == ["--worker_pool"]
    assert portable.environment_config == f"localhost:{sidecar['ports'][0]['containerPort']}"
    # The worker pool has a GPU; the job asks for it, so it never falls back to CPU silently.
    assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert options.view_as(EmbedOptions).device == "cuda"


def _dag_constants() -> dict:
    """The DAG's module-level settings, evaluated without Airflow (not installed here)."""
    tree = ast.parse((DEPLOY / "schedule" / "nightly_embed_dag.py").read_text())
    settings = ast.Module([node for node in tree.body if isinstance(node, ast.Assign)], type_ignores=[])
    namespace: dict = {}
    exec(compile(settings, "nightly_embed_dag.py", "exec"), namespace)
    return namespace


def _render(template: str, variables: dict | None = None, **context) -> str:
    """`template` as Airflow renders it (sandboxed), with the Airflow variables `variables`."""
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    env.filters["ts_nodash"] = lambda value: value.strftime("%Y%m%dT%H%M%S")  # as Airflow's
    return env.from_string(template).render(var={"value": variables or {"embed_bucket": "gs://b"}}, **context)


def test_nightly_dag_passes_the_last_successful_nights_output_as_previous():
    """A night's --previous is the folder the last successful run wrote, whatever ran between: both are
    named by a run's data interval start, which the trigger timetable makes the moment it was triggered
    (`ds` named a manual run's folder by another date than the next night looked for)."""
    parameters = _dag_constants()["PARAMETERS"]
    assert set(parameters) <= set(_metadata_names())
    variables = {"embed_bucket": "gs://b", "embed_input": "gs://b/kb/*.parquet", "embed_carry_columns": "title,url"}
    manual, night = datetime(2026, 11, 21, 9, 30), datetime(2026, 11, 22, 2)  # a manual run, then a night
    manual_output = _render(parameters["output"], variables, data_interval_start=manual)
    after_success = {
        k: _render(v, variables, data_interval_start=night, prev_data_interval_start_success=manual)
        for k, v in parameters.items()
    }
    assert (manual_output, after_success["output"], after_success["previous"]) == (
        "gs://b/embeddings/20261121T093000",
        "gs://b/embeddings/20261122T020000",
        manual_output,
    )
    source = (DEPLOY / "schedule" / "nightly_embed_dag.py").read_text()
    assert 'schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC")' in source
    unset = {k: v for k, v in variables.items() if k != "embed_carry_columns"}  # the optional one
    first = {
        k: _render(v, unset, data_interval_start=night, prev_data_interval_start_success=None)
        for k, v in parameters.items()
    }
    assert (first["previous"], first["carry_columns"], after_success["carry_columns"]) == ("", "", "title,url")
    assert parameters["device"] == "cuda"  # as launch.sh: a GPU job never falls back to CPU silently
    for rendered in (after_success, first):
        options = parse_command_line([f"--{k}={v}" for k, v in rendered.items()])
        assert options.get_all_options()["input"] == "gs://b/kb/*.parquet"
        assert options.get_all_options()["overwrite"] is True  # a night run again replaces its own output


def test_nightly_dag_launches_the_template_built_with_its_worker_images_tag():
    """The variable embed_worker_image names the worker image `launch.sh build` pushed; the DAG launches
    the template that build wrote, not another build's."""
    build = _dry_run("dataflow/launch.sh", "build", PROJECT="p", BUCKET="gs://b", TAG="v7")
    image = "us-central1-docker.pkg.dev/p/embed/gpu-worker:v7"
    assert f"docker push {image} " in build
    template = _render(_dag_constants()["TEMPLATE"], {"embed_bucket": "gs://b", "embed_worker_image": image})
    assert template == "gs://b/templates/embed-job-v7.json"
    assert any(line.startswith(f"gcloud dataflow flex-template build {template} ") for line in build)
    # A BUCKET given with its last "/" names the same objects (gs://b//templates/... is another one).
    assert _dry_run("dataflow/launch.sh", "build", PROJECT="p", BUCKET="gs://b/", TAG="v7") == build


def test_nightly_dag_gives_the_load_its_dsn_from_a_kubernetes_secret():
    """Rendered into the pod's env_vars, a connection's DSN (its password) was in the pod's spec and in
    the task's rendered fields, which Airflow stores and shows; a Secret keeps it out of both."""
    tree = ast.parse((DEPLOY / "schedule" / "nightly_embed_dag.py").read_text())
    (pod,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "KubernetesPodOperator"
    ]
    keywords = {keyword.arg: keyword.value for keyword in pod.keywords}
    assert "env_vars" not in keywords
    (secret,) = keywords["secrets"].elts
    given = {keyword.arg: ast.literal_eval(keyword.value) for keyword in secret.keywords if keyword.arg}
    assert (secret.func.id, given) == ("Secret", {"deploy_type": "env", "deploy_target": "PGVECTOR_DSN"})
    assert _dag_constants()["DSN_SECRET"] == {"secret": "embed-pgvector", "key": "dsn"}
    assert '"$PGVECTOR_DSN"' in _dag_constants()["LOAD_COMMAND"]


def test_nightly_dag_loads_the_nights_run_only_after_its_manifest():
    constants = _dag_constants()
    source = (DEPLOY / "schedule" / "nightly_embed_dag.py").read_text()
    assert "embed >> manifest >> load" in source
    night = datetime(2026, 11, 22, 2)
    # The sensor's bucket and object name the manifest of the night's --output, embed_bucket a bucket or a folder.
    for bucket, output in (
        ("gs://b", "gs://b/embeddings/20261122T020000"),
        ("gs://b/", "gs://b/embeddings/20261122T020000"),
        ("gs://b/nightly/kb", "gs://b/nightly/kb/embeddings/20261122T020000"),
        ("gs://b/nightly/", "gs://b/nightly/embeddings/20261122T020000"),
    ):
        variables = {"embed_bucket": bucket}
        sensed = [
            _render(constants[name], variables, data_interval_start=night)
            for name in ("MANIFEST_BUCKET", "MANIFEST_OBJECT")
        ]
        assert _render(constants["OUTPUT"], variables, data_interval_start=night) == output
        assert "gs://{}/{}".format(*sensed) == f"{output}/manifest.json"
    assert "bucket=MANIFEST_BUCKET," in source and "object=MANIFEST_OBJECT," in source
    template = constants["LOAD_COMMAND"].replace("{{ var.value.embed_table }}", "kb_vectors")
    rendered = _render(template, data_interval_start=night)
    assert rendered.startswith("python -m pipeline.load ")
    arguments = shlex.split(rendered.replace('"$PGVECTOR_DSN"', "postgresql:///kb"))[3:]
    args = command_line().parse_args(arguments)
    assert (args.target, args.dsn, args.run_dir) == (
        "pgvector",
        "postgresql:///kb",
        "gs://b/embeddings/20261122T020000",
    )
    assert args.max_deleted_share == 0.5
    # The night mass deletions are meant, the variable lets them through.
    allowed = _render(template, {"embed_bucket": "gs://b", "embed_max_deleted_share": "1"}, data_interval_start=night)
    allowed_args = shlex.split(allowed.replace('"$PGVECTOR_DSN"', "postgresql:///kb"))[3:]
    assert command_line().parse_args(allowed_args).max_deleted_share == 1.0
