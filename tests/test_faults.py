"""Faults at the edges: OS errors end in one line, SIGTERM unwinds like Ctrl-C, nothing is lost.

Each stage runs as DVC runs it (`python -m stages.X` in a subprocess). A full disk is a small
tmpfs and a read-only folder a read-only bind mount: both need root (and mount rights), and
those tests skip with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import synthcoco
import torch
import yaml
from httpserver import slow_folder_server
from torch.utils.data import DataLoader, Dataset

from cocoseg.common.cli import failure_line
from cocoseg.common.errors import DataError, OutputError, os_fault
from cocoseg.common.io import atomic_write, remove_stale_temps, write_json
from cocoseg.modeling.records import load_record
from cocoseg.train.checkpoints import checkpoint_path, save_torch

PROJECT = Path(__file__).resolve().parents[1]
TRAIN = {
    "weights": "none", "epochs": 2, "batch_size": 2, "num_workers": 1, "min_size": 64,
    "max_size": 64, "augment": "none", "warmup_iters": 1, "amp": False, "device": "cpu",
    "rois_per_image": 64,
}  # fmt: skip


# --- helpers ---------------------------------------------------------------------------------


def mount(*args: str) -> None:
    """Run mount(8); skip the test where this process may not mount."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs or a read-only bind mount")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at path: writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """path (with what it holds) made read-only by a read-only bind mount onto itself."""
    path.mkdir(parents=True, exist_ok=True)
    mount("--bind", str(path), str(path))
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def dead_pid() -> int:
    """The pid of a process that has ended (a killed writer's, for temp-file names)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stage_cmd(name: str, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", f"stages.{name}", *map(str, args)]


def stage_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path = PROJECT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=stage_env(), capture_output=True, text=True, timeout=600
    )


def ending(proc: subprocess.CompletedProcess[str] | tuple[int, str]) -> tuple[int, str]:
    """(exit code, last stderr line); the run must not have printed a traceback."""
    code, stderr = (proc.returncode, proc.stderr) if not isinstance(proc, tuple) else proc
    assert "Traceback" not in stderr, stderr
    return code, stderr.strip().splitlines()[-1]


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".part")))


def train_params(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump({"train": {**TRAIN, **changes}}))
    return path


# --- OS faults: one line, exit 2, nothing half-written -------------------------------------------


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_old_model(tmp_path):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, size=(64, 64))
    params = train_params(tmp_path / "params.yaml", epochs=1)
    with small_disk(tmp_path / "models", "40m") as models:
        (models / "model.pt").write_bytes(b"the previous model")
        proc = run(stage_cmd("train", "--params", params, "--subset", subset, "--out", models,
                             "--reports", tmp_path / "reports"))  # fmt: skip
        code, line = ending(proc)
        assert code == 2
        assert line.startswith(f"error: {checkpoint_path(models / 'checkpoints', 1)}: ")
        assert "No space left on device (the file needs about" in line and "MB free" in line
        assert (models / "model.pt").read_bytes() == b"the previous model"
        assert temp_files(models) == []


def test_torch_save_on_a_full_disk_names_the_file_not_torchs_zip_writer(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk, pytest.raises(OutputError) as err:
        save_torch(disk / "weights.pt", {"w": torch.zeros(2**20)})
    assert str(err.value).startswith(f"{disk / 'weights.pt'}: No space left on device")
    assert "inline_container" not in str(err.value)
    assert isinstance(os_fault(err.value), OSError)  # the cause stays chained for debugging


def test_a_read_only_report_folder_is_one_line_naming_the_file(tmp_path, synthetic_subset):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"eda": {"n_samples": 2}}))
    with read_only(tmp_path / "reports") as reports:
        proc = run(stage_cmd("eda", "--params", params, "--subset", synthetic_subset, "--out",
                             reports))  # fmt: skip
    code, line = ending(proc)
    assert code == 2
    assert line.startswith(f"error: {reports}/") and "Read-only file system" in line
    assert "remount it writable or write elsewhere" in line


def test_an_image_the_os_cannot_read_in_a_training_worker_is_one_line(tmp_path):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, size=(64, 64))
    victim = sorted((subset / "images" / "train").glob("*.jpg"))[0]
    victim.unlink()
    victim.mkdir()  # open() fails with EISDIR: an OS error, not a decoding one
    params = train_params(tmp_path / "params.yaml", epochs=1, num_workers=1)
    proc = run(stage_cmd("train", "--params", params, "--subset", subset, "--out",
                         tmp_path / "models", "--reports", tmp_path / "reports"))  # fmt: skip
    assert ending(proc) == (2, f"error: {victim}: Is a directory")


class _Unreadable(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", "/data/secret.jpg")


def test_os_errors_re_raised_by_dataloader_workers_are_worded_as_one_line():
    with pytest.raises(PermissionError) as err:
        next(iter(DataLoader(_Unreadable(), num_workers=1)))
    assert "Original Traceback" in str(err.value)  # what torch gives us
    line, code = failure_line(err.value)
    assert code == 2
    assert line.startswith("error: /data/secret.jpg: Permission denied; check the owner")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"AP": 0.5})
    with (
        pytest.raises(OutputError, match=rf"^{target}: Input/output error"),
        atomic_write(target) as f,
    ):
        f.write(b"half")
        raise OSError(errno.EIO, "Input/output error")
    assert target.read_bytes() == b'{\n  "AP": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_an_unreadable_checkpoint_names_the_os_cause_not_a_bad_file(tmp_path):
    folder = tmp_path / "model.pt"
    folder.mkdir()
    with pytest.raises(DataError, match=rf"^{folder}: Is a directory$"):
        load_record(folder)


# --- temp files: none survives, and a killed run's are cleared -----------------------------------


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".epoch_02.pt.{dead_pid()}.k3j4h5g6.tmp"
    beside = tmp_path / f".model.pt.{dead_pid()}.a1b2c3d4.tmp"
    live = tmp_path / f".model.pt.{os.getppid()}.a1b2c3d4.tmp"  # pytest's parent is alive
    other = tmp_path / "notes.tmp"
    for path in (stale, beside, live, other):
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path / "model.pt") == 1  # a file output: its own temps
    assert not beside.exists() and stale.exists()
    assert remove_stale_temps(tmp_path) == 1  # a folder output: searched through
    assert not stale.exists() and live.exists() and other.exists()


# --- SIGTERM: one line, exit 143, the last finished epoch resumable ------------------------------


def start(cmd: list[str], cwd: Path = PROJECT) -> subprocess.Popen[str]:
    """A stage in its own process group, as `timeout` or a job scheduler would hold it."""
    return subprocess.Popen(
        cmd, cwd=cwd, env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def wait_for(proc: subprocess.Popen[str], ready: callable, what: str) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None:
            stream = proc.stderr or proc.stdout
            raise AssertionError(f"ended before {what}: {stream.read() if stream else ''}")
        assert time.monotonic() < deadline, f"no {what} after 5 minutes"
        time.sleep(0.05)


def terminate_group(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM to the whole group (the stage and its DataLoader workers), as `timeout` does."""
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.slow
def test_sigterm_mid_epoch_ends_in_one_line_and_the_next_run_resumes(tmp_path):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=6, size=(64, 64))
    params = train_params(tmp_path / "params.yaml", epochs=2, num_workers=1)
    models = tmp_path / "models"
    cmd = stage_cmd("train", "--params", params, "--subset", subset, "--out", models,
                    "--reports", tmp_path / "reports")  # fmt: skip
    proc = start(cmd)
    first = checkpoint_path(models / "checkpoints", 1)
    wait_for(proc, first.exists, "the first checkpoint")
    time.sleep(1.0)  # into epoch 2
    code, line = ending(terminate_group(proc))
    assert (code, line) == (143, "terminated (SIGTERM): outputs written so far are complete; "
                                 "re-run to continue")  # fmt: skip
    assert temp_files(tmp_path) == []
    assert load_record(first)["epoch"] == 1
    assert not (models / "model.pt").exists()

    killed_temp = models / "checkpoints" / f".epoch_02.pt.{dead_pid()}.zz9yy8xx.tmp"
    killed_temp.write_bytes(b"what a SIGKILL leaves")
    again = run(cmd)
    assert again.returncode == 0, again.stderr
    assert "resuming after epoch 1 of 2" in again.stderr
    assert not killed_temp.exists() and temp_files(tmp_path) == []
    assert load_record(models / "model.pt")["classes"] == synthcoco.TARGET_NAMES


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A web server taking a second per file: downloads are in flight for long."""
    with slow_folder_server(tmp_path / "served", delay=1.0) as served:
        yield served


def test_sigterm_during_the_subset_downloads_is_one_line_and_leaves_no_partial_file(
    slow_server, tmp_path
):
    url, served = slow_server
    synthcoco.make_coco_root(served, n_train=16, n_val=8, n_test=2, base_url=url)
    local = tmp_path / "local"  # annotations only: every image comes over the slow server
    shutil.copytree(served / "annotations", local / "annotations")
    params = tmp_path / "params.yaml"
    subset = {"n_train": 12, "n_val": 6, "n_test": 2, "test_from": "val2017",
              "min_images_per_class": 1, "workers": 4}  # fmt: skip
    params.write_text(yaml.safe_dump({"data": {"coco_root": str(local)}, "subset": subset}))
    out = tmp_path / "out"
    proc = start(stage_cmd("subset", "--params", params, "--out", out))
    wait_for(proc, lambda: len(list(out.rglob("*.jpg"))) >= 2, "two images")
    started = time.monotonic()
    code, line = ending(terminate_group(proc))
    assert time.monotonic() - started < 30  # in-flight downloads stop between chunks
    assert code == 143 and line.startswith("terminated (SIGTERM)")
    assert temp_files(out) == []
    assert not (out / "stats.json").exists()


@pytest.mark.slow
def test_sigterm_to_dvc_exp_run_reaches_the_stage_which_ends_in_one_line(tmp_path):
    """`timeout dvc exp run` signals the whole group: DVC, the shell and the stage."""
    from dvcrepo import dvc, dvc_env, make_dvc_repo

    coco = synthcoco.make_coco_root(tmp_path / "coco", n_train=8, n_val=2, n_test=0, size=(64, 64))
    params = {
        "data": {"coco_root": str(coco)},
        "subset": {"n_train": 6, "n_val": 2, "n_test": 0, "test_from": "val2017",
                   "strategy": "random", "workers": 2},
        "train": TRAIN,
    }  # fmt: skip
    repo = make_dvc_repo(tmp_path / "repo", params)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "exp", "run", "train"], cwd=repo, env=dvc_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    first = checkpoint_path(repo / "models" / "checkpoints", 1)
    wait_for(proc, first.exists, "the first checkpoint")
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert "terminated (SIGTERM): outputs written so far are complete" in output, output
    assert "Traceback" not in output, output
    assert temp_files(repo / "models") == [] and temp_files(repo / "data") == []

    again = dvc(repo, "exp", "run", "train")  # the stages after train add nothing here
    assert "resuming after epoch 1 of 2" in again.stdout + again.stderr
    assert load_record(repo / "models" / "model.pt")["classes"] == synthcoco.TARGET_NAMES


def test_a_bug_raised_while_handling_an_os_error_keeps_its_traceback():
    """Only an OS error that caused the failure is worded as one; a handled one is not."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise ValueError("a bug in the handler") from None
    except ValueError as err:
        assert os_fault(err) is None and failure_line(err) is None
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/x/model.pt")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
    except RuntimeError as err:  # torch.save's wrapping: the OSError is the context
        assert failure_line(err) == (
            "error: /x/model.pt: No space left on device; free some space or point the output "
            "at a bigger disk", 2)  # fmt: skip
