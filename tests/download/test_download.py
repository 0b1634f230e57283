"""The download stage against a real HTTP server on 127.0.0.1 (tests/httpserver.py)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import shutil
import socket
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import synthcoco
from dvcrepo import PROJECT, dvc, dvc_env, make_dvc_repo, stages_ran
from httpserver import FileServer
from paramfiles import write_params

from cocoseg.common.errors import DataError, DownloadError
from cocoseg.common.http import HostUnreachable, download_file
from cocoseg.common.io import part_path
from cocoseg.download.archives import CACHE_DIR, ensure_annotations, inspect_json

TRAINVAL = "/annotations/annotations_trainval2017.zip"
TESTINFO = "/annotations/image_info_test2017.zip"
ALL = ["instances_train2017.json", "instances_val2017.json", "image_info_test2017.json"]
FAST = {"retries": 3, "timeout": 5.0, "progress": False, "backoff": 0.001}
UNRESOLVABLE = "http://coco.invalid"  # RFC 6761: never resolves, and fails without a network


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """COCO's two annotation zips built from the synthetic root (module-wide, read only)."""
    out = tmp_path_factory.mktemp("archives")
    synthcoco.make_archives(synthetic_root, out / "annotations")
    return out


@pytest.fixture
def server(tmp_path: Path, archives: Path):
    """A server with its own copy of the archives, so a test may tamper with them."""
    root = tmp_path / "srv"
    shutil.copytree(archives, root)
    with FileServer(root) as srv:
        yield srv


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Everything under folder (temp and partial files included), as relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as written
    path.write_bytes(buf.getvalue())


# --- download_file --------------------------------------------------------------------------


def test_resumes_a_partial_file_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    source = (server.root / TRAINVAL.lstrip("/")).read_bytes()
    dest = tmp_path / "out" / "a.zip"
    dest.parent.mkdir()
    part_path(dest).write_bytes(source[:1000])
    download_file(server.url + TRAINVAL, dest, **FAST)
    assert dest.read_bytes() == source
    (request,) = server.requests_for(TRAINVAL)
    assert (request.range, request.status) == ("bytes=1000-", 206)
    assert not part_path(dest).exists()


def test_dropped_connection_resumes_where_it_stopped(server: FileServer, tmp_path: Path) -> None:
    source = random.Random(0).randbytes(400_000)  # bigger than a network read
    (server.root / "blob.bin").write_bytes(source)
    server.cut("/blob.bin", after=250_000)
    dest = download_file(server.url + "/blob.bin", tmp_path / "blob.bin", **FAST)
    assert dest.read_bytes() == source
    first, second = server.requests
    assert first.range is None
    offset = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 100_000 < offset <= 250_000 and second.status == 206


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, archives: Path) -> None:
    source = (archives / TRAINVAL.lstrip("/")).read_bytes()
    dest = tmp_path / "a.zip"
    part_path(dest).write_bytes(b"stale bytes of some other file")
    with FileServer(archives, ranges=False) as srv:
        download_file(srv.url + TRAINVAL, dest, **FAST)
        assert [r.status for r in srv.requests] == [200]
    assert dest.read_bytes() == source


def test_complete_part_file_is_finished_without_a_body(server: FileServer, tmp_path: Path) -> None:
    source = (server.root / TRAINVAL.lstrip("/")).read_bytes()
    dest = tmp_path / "a.zip"
    part_path(dest).write_bytes(source)
    download_file(server.url + TRAINVAL, dest, **FAST)
    assert [r.status for r in server.requests] == [416]
    assert dest.read_bytes() == source


def test_503_twice_then_success(server: FileServer, tmp_path: Path) -> None:
    server.fail(TRAINVAL, times=2)
    dest = download_file(server.url + TRAINVAL, tmp_path / "a.zip", **FAST)
    assert [r.status for r in server.requests] == [503, 503, 200]
    assert dest.read_bytes() == (server.root / TRAINVAL.lstrip("/")).read_bytes()


def test_404_fails_at_once_naming_the_url(server: FileServer, tmp_path: Path) -> None:
    url = server.url + "/annotations/nope.zip"
    with pytest.raises(DownloadError, match="404") as err:
        download_file(url, tmp_path / "nope.zip", **FAST)
    assert url in str(err.value)
    assert len(server.requests) == 1
    assert leftovers(tmp_path) == ["srv", "srv/annotations", *_archive_names(server)]


def _archive_names(server: FileServer) -> list[str]:
    return sorted(f"srv/annotations/{p.name}" for p in (server.root / "annotations").iterdir())


def test_exhausted_retries_raise_with_last_status(server: FileServer, tmp_path: Path) -> None:
    server.fail(TRAINVAL, times=10, status=502)
    url, dest = server.url + TRAINVAL, tmp_path / "a.zip"
    part_path(dest).write_bytes(b"x" * 1000)
    with pytest.raises(DownloadError, match="502") as err:
        download_file(url, dest, **{**FAST, "retries": 2})
    assert url in str(err.value) and "keeps 1000 bytes to resume" in str(err.value)
    assert [r.range for r in server.requests] == ["bytes=1000-"] * 3
    assert not dest.exists() and part_path(dest).stat().st_size == 1000


def closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]


def test_transient_failures_are_logged_as_retries(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail(TRAINVAL, times=2)
    with caplog.at_level(logging.WARNING):
        download_file(server.url + TRAINVAL, tmp_path / "a.zip", **FAST)
    assert len(retry_warnings(caplog)) == 2  # what the fail-fast tests check the absence of


def test_connection_refused_fails_at_once_keeping_the_partial_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    url, dest = f"http://127.0.0.1:{port}/a.zip", tmp_path / "a.zip"
    part_path(dest).write_bytes(b"x" * 1000)
    with caplog.at_level(logging.WARNING), pytest.raises(HostUnreachable) as err:
        download_file(url, dest, **FAST)
    message = str(err.value)
    assert message.startswith(f"{url}: 127.0.0.1:{port} refused the connection; not retried")
    assert "keeps 1000 bytes to resume" in message
    assert retry_warnings(caplog) == []
    assert part_path(dest).stat().st_size == 1000


def test_wrong_bytes_rejected_by_verify_and_deleted(server: FileServer, tmp_path: Path) -> None:
    good = md5(server.root / TRAINVAL.lstrip("/"))
    server.replace(TRAINVAL, b"<html>captive portal</html>")

    def verify(path: Path) -> None:
        if md5(path) != good:
            raise DataError(f"{path}: md5 mismatch")

    dest = tmp_path / "out" / "a.zip"
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download_file(server.url + TRAINVAL, dest, verify=verify, **FAST)
    assert leftovers(dest.parent) == []


def test_parallel_downloads(server: FileServer, tmp_path: Path) -> None:
    server.fail(TRAINVAL, times=1)
    jobs = {tmp_path / f"{i}.zip": (TRAINVAL, TESTINFO)[i % 2] for i in range(6)}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda d: download_file(server.url + jobs[d], d, **FAST), jobs))
    for dest, path in jobs.items():
        assert dest.read_bytes() == (server.root / path.lstrip("/")).read_bytes()


# --- ensure_annotations -------------------------------------------------------------------


def test_fetches_and_extracts_byte_identical_files(
    server: FileServer, tmp_path: Path, synthetic_root: Path
) -> None:
    coco = tmp_path / "coco"
    manifest = ensure_annotations(coco, server.url, need_test_info=True, create=True, **FAST)
    for name in ALL:
        got, want = coco / "annotations" / name, synthetic_root / "annotations" / name
        assert got.read_bytes() == want.read_bytes()
        assert manifest["files"][name] == {"size": want.stat().st_size, "md5": md5(want)}
    assert manifest["coco_root"] == str(coco) and manifest["base_url"] == server.url
    # Only the needed members were extracted, and the archives were cleaned away.
    assert leftovers(coco) == ["annotations", *(f"annotations/{n}" for n in sorted(ALL))]
    assert sorted(r.path for r in server.requests) == [TRAINVAL, TESTINFO]


def test_val_only_does_not_fetch_the_test_archive(server: FileServer, tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    manifest = ensure_annotations(coco, server.url + "/", need_test_info=False, create=True, **FAST)
    assert sorted(manifest["files"]) == sorted(ALL[:2])
    assert [r.path for r in server.requests] == [TRAINVAL]
    assert not (coco / "annotations" / "image_info_test2017.json").exists()


def test_present_files_are_not_downloaded_again(
    server: FileServer, tmp_path: Path, synthetic_root: Path
) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(synthetic_root / "annotations", coco / "annotations")
    first = ensure_annotations(coco, server.url, need_test_info=True, create=True, **FAST)
    assert server.requests == []
    # Only the missing file is fetched, from its own archive.
    (coco / "annotations" / "image_info_test2017.json").unlink()
    second = ensure_annotations(coco, server.url, need_test_info=True, create=True, **FAST)
    assert [r.path for r in server.requests] == [TESTINFO]
    assert first == second


def test_a_copy_of_the_real_coco_sample_works_offline(
    coco_sample: Path, tmp_path: Path, server: FileServer
) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(coco_sample / "annotations", coco / "annotations")
    manifest = ensure_annotations(coco, server.url, need_test_info=False, create=True, **FAST)
    assert server.requests == []
    for name in ALL[:2]:
        assert manifest["files"][name]["md5"] == md5(coco_sample / "annotations" / name)


def test_partial_archive_in_the_cache_is_resumed(server: FileServer, tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    source = (server.root / TRAINVAL.lstrip("/")).read_bytes()
    part = coco / CACHE_DIR / "annotations_trainval2017.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(source[: len(source) // 2])
    ensure_annotations(coco, server.url, need_test_info=False, create=True, **FAST)
    assert [r.range for r in server.requests] == [f"bytes={len(source) // 2}-"]
    assert (coco / "annotations" / "instances_val2017.json").exists()


@pytest.mark.parametrize("damage", ["deflate", "crc", "truncated"])
def test_corrupt_archive_is_rejected_and_nothing_kept(
    server: FileServer, tmp_path: Path, damage: str
) -> None:
    path = server.root / TRAINVAL.lstrip("/")
    if damage == "crc":  # stored members: only the CRC can tell the flipped byte
        with zipfile.ZipFile(path) as zf:
            members = {name: zf.read(name) for name in zf.namelist()}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:  # flip bytes inside the first member's data, past its local header
        for i in range(200, 400):
            data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    coco = tmp_path / "coco"
    with pytest.raises(DownloadError) as err:
        ensure_annotations(coco, server.url, need_test_info=False, create=True, **FAST)
    message = str(err.value)
    assert "annotations_trainval2017.zip" in message
    expected = {"deflate": "is corrupt", "crc": "Bad CRC-32", "truncated": "not a readable zip"}
    assert expected[damage] in message
    assert leftovers(coco) in ([], ["annotations"])


@pytest.mark.parametrize("hostile", ["annotations/../../evil.json", "ABSOLUTE"])
def test_archive_with_a_member_leaving_its_folder_is_refused(
    server: FileServer, tmp_path: Path, synthetic_root: Path, hostile: str
) -> None:
    outside = tmp_path / "outside" / "evil.json"
    if hostile == "ABSOLUTE":
        hostile = str(outside)
    members = {f"annotations/{n}": (synthetic_root / "annotations" / n).read_bytes() for n in ALL}
    write_zip(server.root / TRAINVAL.lstrip("/"), {**members, hostile: b"{}"})
    coco = tmp_path / "coco"
    with pytest.raises(DownloadError, match="leaves the extraction folder") as err:
        ensure_annotations(coco, server.url, need_test_info=False, create=True, **FAST)
    assert hostile in str(err.value)
    assert not list(tmp_path.rglob("evil.json")) and not outside.exists()
    assert leftovers(coco) in ([], ["annotations"])


def test_archive_lacking_a_member_is_named(server: FileServer, tmp_path: Path) -> None:
    write_zip(server.root / TESTINFO.lstrip("/"), {"annotations/other.json": b"{}"})
    with pytest.raises(DownloadError, match=r"image_info_test2017\.zip.*lacks member"):
        ensure_annotations(tmp_path / "coco", server.url, need_test_info=True, create=True, **FAST)


def test_truncated_present_file_is_named_not_reused(
    server: FileServer, tmp_path: Path, synthetic_root: Path
) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(synthetic_root / "annotations", coco / "annotations")
    val = coco / "annotations" / "instances_val2017.json"
    text = val.read_bytes()
    # Cut right after a '}' mid-file: a check of the last character alone would pass it.
    val.write_bytes(text[: text.index(b"}", len(text) // 2) + 1])
    with pytest.raises(DataError, match=r"instances_val2017\.json: truncated"):
        ensure_annotations(coco, server.url, need_test_info=False, create=True, **FAST)
    assert server.requests == []


@pytest.mark.parametrize("need_test_info", [False, True])
def test_unresolvable_host_fails_at_once_naming_the_local_way_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, need_test_info: bool
) -> None:
    coco = tmp_path / "coco"
    with caplog.at_level(logging.WARNING), pytest.raises(HostUnreachable) as err:
        ensure_annotations(coco, UNRESOLVABLE, need_test_info=need_test_info, create=True, **FAST)
    message = str(err.value)
    assert message.startswith(
        f"{UNRESOLVABLE}{TRAINVAL}: host name coco.invalid does not resolve ("
    )
    assert "; not retried. To work offline, set data.coco_root (now " + str(coco) in message
    assert "annotations/instances_train2017.json, annotations/instances_val2017.json" in message
    assert ("annotations/image_info_test2017.json" in message) == need_test_info
    assert message.endswith("Or get network access to data.base_url")
    assert retry_warnings(caplog) == []
    assert leftovers(coco) == []


def test_coco_copy_without_annotations_is_named_before_any_request(
    server: FileServer, tmp_path: Path
) -> None:
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    (coco / "val2017").mkdir()
    (coco / "annotations").mkdir()  # there, but holding none of the files
    with pytest.raises(DataError) as err:
        ensure_annotations(coco, server.url, need_test_info=True, create=True, **FAST)
    assert str(err.value).startswith(
        f"data.coco_root = {coco} exists (has train2017/, val2017/) but has no "
        "annotations/instances_train2017.json, annotations/instances_val2017.json, "
        "annotations/image_info_test2017.json: "
    )
    assert "annotations_trainval2017.zip, image_info_test2017.zip" in str(err.value)
    assert server.requests == []
    assert leftovers(coco) == ["annotations", "train2017", "val2017"]


def test_coco_copy_with_some_annotations_fetches_the_rest(
    server: FileServer, tmp_path: Path, synthetic_root: Path
) -> None:
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    shutil.copytree(synthetic_root / "annotations", coco / "annotations")
    (coco / "annotations" / "image_info_test2017.json").unlink()
    ensure_annotations(coco, server.url, need_test_info=True, create=True, **FAST)
    assert [r.path for r in server.requests] == [TESTINFO]
    assert (coco / "annotations" / "image_info_test2017.json").exists()


def test_valid_json_with_unbalanced_braces_in_strings_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"info": {"description": "a { and a ["}, "images": []}))
    assert inspect_json(path) == {"size": path.stat().st_size, "md5": md5(path)}


# --- the stage --------------------------------------------------------------------------------


def stage_params(path: Path, **data: object) -> Path:
    return write_params(path, {"data": data, "subset": {"test_from": "val2017"}})


def run_stage(tmp_path: Path, params: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(PROJECT / "stages" / "download.py"), "--params", str(params)]
    return subprocess.run(
        [*cmd, "--out", str(tmp_path / "data" / "download.json")],
        cwd=tmp_path,
        env=dvc_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stage_script_writes_the_manifest(
    server: FileServer, tmp_path: Path, synthetic_root: Path
) -> None:
    """The default data.coco_root (data/coco) is made and the annotations downloaded into it."""
    params = stage_params(tmp_path / "p.yaml", base_url=server.url, timeout=5.0)
    proc = run_stage(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "data" / "download.json").read_text())
    assert manifest["coco_root"] == "data/coco"
    want = synthetic_root / "annotations" / "instances_train2017.json"
    assert manifest["files"]["instances_train2017.json"]["md5"] == md5(want)
    assert sorted(manifest["files"]) == sorted(ALL[:2])
    assert (tmp_path / "data" / "coco" / "annotations" / "instances_train2017.json").exists()


def test_stage_script_reports_a_failure_in_one_line(server: FileServer, tmp_path: Path) -> None:
    url = server.url + "/missing"
    (tmp_path / "coco").mkdir()  # a folder the user made: annotations are downloaded into it
    params = stage_params(tmp_path / "p.yaml", coco_root="coco", base_url=url, retries=0)
    proc = run_stage(tmp_path, params)
    assert proc.returncode == 2
    assert f"error: {url}/annotations/annotations_trainval2017.zip: HTTP 404" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "download.json").exists()


def test_stage_offline_fails_at_once_without_retrying_in_one_line(tmp_path: Path) -> None:
    # params.yaml's retries (5) with 1 s backoff: retrying the lookup would take over 15 s,
    # each retry logged ("retrying in"); an unresolvable host is not retried at all.
    (tmp_path / "coco").mkdir()
    params = stage_params(tmp_path / "p.yaml", coco_root="coco", base_url=UNRESOLVABLE)
    proc = run_stage(tmp_path, params)
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert "host name coco.invalid does not resolve" in line
    assert "set data.coco_root (now coco) to an existing COCO copy" in line
    assert "retrying" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "download.json").exists()


def test_stage_names_a_coco_copy_without_annotations_in_one_line(
    server: FileServer, tmp_path: Path
) -> None:
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    params = stage_params(tmp_path / "p.yaml", coco_root="coco", base_url=server.url)
    proc = run_stage(tmp_path, params)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "error: data.coco_root = coco exists (has train2017/) but has no "
        "annotations/instances_train2017.json, annotations/instances_val2017.json: "
    )
    assert len(proc.stderr.splitlines()) == 1
    assert server.requests == []


@pytest.mark.parametrize("given", ["typo/path", "absolute"])
def test_a_user_given_root_that_does_not_exist_is_named_not_made(
    server: FileServer, tmp_path: Path, given: str
) -> None:
    root = tmp_path / "typo" / "path" if given == "absolute" else Path(given)
    params = stage_params(tmp_path / "p.yaml", coco_root=str(root), base_url=server.url)
    proc = run_stage(tmp_path, params)
    assert proc.returncode == 2
    shown = root if root.is_absolute() else f"{root} ({tmp_path / root})"
    assert proc.stderr.splitlines() == [
        f"error: data.coco_root = {shown} does not exist: set it to your COCO copy (the folder "
        "holding annotations/, train2017/, val2017/), or make the folder to download the "
        "annotations into; only the default, data/coco, is made for you"
    ]
    assert not (tmp_path / "typo").exists() and server.requests == []


@pytest.mark.slow
def test_dvc_repro_download_then_nothing_to_do(server: FileServer, tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    coco.mkdir()
    repo = make_dvc_repo(
        tmp_path / "repo",
        {
            "data": {"coco_root": str(coco), "base_url": server.url, "timeout": 5.0},
            "subset": {"test_from": "test2017"},
        },
    )
    first = dvc(repo, "repro", "download")
    assert stages_ran(first.stdout) == {"check_params", "download"}
    manifest = json.loads((repo / "data" / "download.json").read_text())
    assert sorted(manifest["files"]) == sorted(ALL)
    for name in ALL:
        assert manifest["files"][name]["md5"] == md5(coco / "annotations" / name)
    second = dvc(repo, "repro", "download")
    assert stages_ran(second.stdout) == set()
    assert len(server.requests) == 2
