"""profiles/slurm on a real single-node SLURM cluster started here (Debian slurm-wlm and munge, as root).

A small demo DAG (one method, 1 shot, seed 1, three scores, one OOD set, no covariate set) runs once
locally and once through ``--profile profiles/slurm``. Asserted: every job of the SLURM run went through
``sbatch`` (its SLURM job id is in Snakemake's output, in the plugin's log file name and in SLURM's job
table), the GPU-capable rules requested and were allocated a GPU (fake GRES devices: ``--gpus=1``
scheduled and ``CUDA_VISIBLE_DEVICES`` set in the job, CPU rules neither; the local run requests none
without an NVIDIA driver), and the metrics tables of both runs are byte-identical. The jobs see no CUDA driver, so they compute on CPU like the local run.

The cluster's configuration, state and logs live in a temporary folder, except slurm.conf and gres.conf:
the plugin's job step drops every SLURM_* variable (SLURM_CONF too) before calling srun, so they must be
in /etc/slurm/. Any files there before are restored afterwards, and only the daemons started here are
stopped.
"""

import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, _merge, restrict_methods

pytestmark = pytest.mark.workflow

ETC = Path("/etc/slurm")
GPU_RULES = {"extract_features", "train_prompt", "score_run"}  # the GPU-capable rules of this DAG
CPU_RULES = {"build_dataset", "fewshot_manifest", "metrics"}
SMALL = {
    "benchmark": "slurm_small",
    "data": {"covariate": [], "ood": ["digits"],
             "sizes": {"fashion_mnist": {"train_per_class": 2, "val_per_class": 1, "test_per_class": 4},
                       "covariate": {"n_per_class": 2}, "ood": {"n": 20}}},
    "fewshot": {"shots": [1], "seeds": [1]},
    "train": {"epochs": 2},
}
METHODS = {"coop": {"kind": "coop"}}
SCORES = {"msp": {"score": "msp", "tau": 0.01}, "energy": {"score": "energy", "tau": 0.01},
          "delta_energy": {"score": "delta_energy", "tau": 0.01, "c": 1, "reset_value": 0.0}}
TARGETS = [f"results/{SMALL['benchmark']}/metrics/{name}" for name in ("detection.csv", "accuracy.csv")]


def small_config(tmp: Path) -> Path:
    cfg = _merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), SMALL)
    cfg["scores"] = SCORES
    restrict_methods(cfg, METHODS)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, config: Path, *extra: str, limit: int = 900) -> subprocess.CompletedProcess:
    """Snakemake under coreutils `timeout`: a job-status problem hangs rather than fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["timeout", "--kill-after=20", str(limit), *SNAKEMAKE, "-s", str(ROOT / "Snakefile"),
           "--configfile", str(config), *extra, *TARGETS]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    assert proc.returncode != 124, f"snakemake timed out after {limit} s:\n{proc.stderr[-5000:]}"
    return proc


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def ensure_packages() -> None:
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "slurm-wlm", "munge"],
                   check=True, env=env, capture_output=True)


def slurm_conf(tmp: Path, host: str, ports: list[int]) -> str:
    mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return f"""\
ClusterName=deltaenergy-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={tmp}/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog={tmp}/task_prolog.sh
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
ReturnToService=2
MinJobAge=600
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb * 9 // 10} Gres=gpu:testgpu:2 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM cluster with two fake GPUs; yields its temporary folder."""
    if os.geteuid() != 0:
        pytest.skip("needs root: installs slurm-wlm and munge, writes /etc/slurm/slurm.conf and starts "
                    "munged, slurmctld and slurmd (run the tests as root, as CI does)")
    ensure_packages()
    tmp = tmp_path_factory.mktemp("slurm")
    tmp.chmod(0o755)
    for sub in ("munge", "state", "spool", "log"):
        (tmp / sub).mkdir()
    (tmp / "munge").chmod(0o700)
    key = tmp / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    # Fake GPUs: GRES needs character devices (ordinary files make the node INVALID).
    gpus = [tmp / f"gpu{i}" for i in range(2)]
    for dev in gpus:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    # Runs before every task of every job: records which GPUs the job's processes see.
    prolog = tmp / "task_prolog.sh"
    prolog.write_text(f'#!/bin/sh\necho "$SLURM_JOB_ID ${{CUDA_VISIBLE_DEVICES-unset}}" >> {tmp}/task_env.txt\n')
    prolog.chmod(0o755)

    host = socket.gethostname().split(".")[0]
    confs = {ETC / "slurm.conf": slurm_conf(tmp, host, free_ports(2)),
             ETC / "gres.conf": f"AutoDetect=off\nName=gpu Type=testgpu File={','.join(map(str, gpus))}\n"}
    saved = {path: path.read_bytes() for path in confs if path.exists()}
    daemons, outputs = [], []
    ETC.mkdir(exist_ok=True)
    try:
        for path, text in confs.items():
            path.write_text(text)
        munge = ["munged", "--foreground", "--force", f"--socket={tmp}/munge/munge.socket", f"--key-file={key}",
                 f"--log-file={tmp}/munge/munged.log", f"--pid-file={tmp}/munge/munged.pid",
                 f"--seed-file={tmp}/munge/munged.seed"]
        for cmd in (munge, ["slurmctld", "-D"], ["slurmd", "-D"]):
            outputs.append(open(tmp / "log" / f"{cmd[0]}.out", "w"))
            daemons.append(subprocess.Popen(cmd, stdout=outputs[-1], stderr=subprocess.STDOUT))
            time.sleep(1)
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp / "log").iterdir()))
            pytest.fail(f"the SLURM node did not become idle within 60 s (sinfo: {state!r}):\n{logs}")
        yield tmp
    finally:
        if daemons:
            subprocess.run(["scancel", "--partition=test"], capture_output=True)  # jobs left by a failure
        for proc in reversed(daemons):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for out in outputs:
            out.close()
        for path in confs:
            if path in saved:
                path.write_bytes(saved[path])
            else:
                path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """(local run folder, SLURM run folder, local run's Snakemake output, SLURM run's Snakemake output)."""
    tmp = tmp_path_factory.mktemp("runs")
    config = small_config(tmp)
    # Only what this cluster needs: it has no accounting database (sacct fails, squeue works since
    # MinJobAge is 600 s) and a test need not wait 40 s before the first status query.
    options = {"local": ["--cores", "2"],
               "slurm": ["--profile", str(ROOT / "profiles" / "slurm"), "--slurm-status-command", "squeue",
                         "--slurm-init-seconds-before-status-checks", "2"]}
    # Both at once: the local run uses the CPU while the SLURM run waits between status queries.
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(snakemake, tmp / name, config, *extra) for name, extra in options.items()}
        local, slurm = (futures[name].result() for name in options)
    print(f"local and SLURM run: {time.monotonic() - start:.0f} s")
    assert local.returncode == 0, local.stderr[-5000:]
    assert slurm.returncode == 0, slurm.stderr[-8000:]
    return tmp / "local", tmp / "slurm", local.stdout + local.stderr, slurm.stdout + slurm.stderr


def job_table(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def test_every_job_went_through_sbatch(runs):
    _, slurm_dir, _, output = runs
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    # 2 datasets built and encoded, 1 few-shot draw, 1 training, 3 scoring runs (zero-shot, template
    # ensemble, coop), metrics: 10 jobs, each one SLURM job.
    assert len(submitted) == 10 and len(set(submitted)) == 10, output[-5000:]
    logs = {p.stem: p for p in (slurm_dir / "logs" / "slurm").rglob("*.log")}
    assert set(submitted) <= set(logs), f"no SLURM log for jobs {sorted(set(submitted) - set(logs))}"
    for job_id in submitted:
        job = job_table(job_id)
        assert job["JobState"] == "COMPLETED" and job["Partition"] == "test", job
        assert job["WorkDir"] == str(slurm_dir)


def test_gpu_rules_get_a_gpu_and_cpu_rules_none(runs, slurm_cluster):
    _, slurm_dir, _, _ = runs
    # The plugin's log files: logs/slurm/rule_<rule>/[<wildcards>/]<job id>.log
    rule_of = {p.stem: p.relative_to(slurm_dir / "logs" / "slurm").parts[0].removeprefix("rule_")
               for p in (slurm_dir / "logs" / "slurm").rglob("*.log")}
    assert set(rule_of.values()) == GPU_RULES | CPU_RULES
    seen = {}  # job id -> CUDA_VISIBLE_DEVICES of its tasks (batch script and srun step)
    for line in (slurm_cluster / "task_env.txt").read_text().splitlines():
        job_id, devices = line.split()
        seen.setdefault(job_id, set()).add(devices)
    for job_id, rule in rule_of.items():
        gres = job_table(job_id).get("TresPerJob", "")
        if rule in GPU_RULES:
            assert gres == "gres:gpu:1", (rule, job_id, gres)
            assert seen[job_id] and "unset" not in seen[job_id] and seen[job_id] <= {"0", "1"}, (rule, seen[job_id])
        else:
            assert "gpu" not in gres, (rule, job_id, gres)
            assert seen[job_id] == {"unset"}, (rule, seen[job_id])


def requested_gpus(output: str) -> dict[str, set[int]]:
    """Rule -> the `gpu` resource of its jobs, read from the job blocks Snakemake prints."""
    found = {}
    for rule, block in re.findall(r"^(?:local)?rule (\w+):\n((?: {4}.*\n)+)", output, re.M):
        gpu = re.search(r"^ {4}resources: .*\bgpu=(\d+)", block, re.M)
        found.setdefault(rule, set()).add(int(gpu[1]) if gpu else 0)
    return found


def test_gpu_requested_where_there_is_one(runs):
    _, _, local, slurm = runs
    # gpu_request (workflow/rules/common.smk): always on a cluster; locally only with an NVIDIA driver,
    # else GPU-capable jobs would queue for the workstation's single gpu slot for nothing.
    here = 1 if shutil.which("nvidia-smi") else 0
    assert requested_gpus(slurm) == {rule: {int(rule in GPU_RULES)} for rule in GPU_RULES | CPU_RULES}
    assert requested_gpus(local) == {rule: {here if rule in GPU_RULES else 0} for rule in GPU_RULES | CPU_RULES}


def test_slurm_run_equals_local_run(runs):
    local_dir, slurm_dir, _, _ = runs
    for target in TARGETS:
        local, slurm = (local_dir / target).read_bytes(), (slurm_dir / target).read_bytes()
        assert local == slurm, f"{target} differs between the local and the SLURM run"
    det = pd.read_csv(slurm_dir / TARGETS[0])
    acc = pd.read_csv(slurm_dir / TARGETS[1])
    # 3 runs x 3 scores x 1 OOD set; 3 runs x the ID test split.
    assert len(det) == 9 and set(det["score"]) == set(SCORES) and set(det["dataset"]) == {"digits"}
    assert len(acc) == 3 and det["auroc"].between(0, 1).all()
