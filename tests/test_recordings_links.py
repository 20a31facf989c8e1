"""Links inside the recordings folder lead nowhere: nothing outside the root is read,
listed, counted or deleted through one (issue 13, finding 1). All against a real server.

A hard link is a name inside the root like any other file: it is served and deleted.
"""

from __future__ import annotations

import json
import os

import httpx

from helpers import wait_for
from test_cleanup import far_schedule, make_recording, size_of

SECRET = "secret-1f0c9e-not-for-the-api"
GIB = 1024**3


def _secret_file(path):
    """A file outside the root whose text is the secret (JSON, so a sidecar read takes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": "complete", "note": SECRET}))
    return path


def _listing(server, **params) -> httpx.Response:
    response = httpx.get(f"{server.url}/api/recordings", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 404, (response.status_code, response.text[:200])
    assert SECRET not in response.text


def test_a_linked_sidecar_is_neither_served_nor_read(server, tmp_path):
    folder = server.recordings / "cam"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "cam_20260101_000000.mp4"
    video.write_bytes(b"\0" * 64)
    secret = _secret_file(tmp_path / "outside" / "secret.json")
    video.with_suffix(".json").symlink_to(secret)
    url = f"{server.url}/api/recordings/cam/{video.with_suffix('.json').name}"

    _refused(httpx.get(url, timeout=10))
    head = httpx.head(url, timeout=10)
    assert head.status_code == 404
    _refused(httpx.get(url, headers={"Range": "bytes=0-9"}, timeout=10))

    # The video itself is a file of the root: listed, but as if it had no sidecar.
    listing = _listing(server)
    assert SECRET not in listing.text
    [entry] = [r for r in listing.json()["recordings"] if r["file"] == video.name]
    assert entry["status"] == "unknown" and entry["size_bytes"] == 64
    assert httpx.get(f"{server.url}/api/recordings/cam/{video.name}").content == b"\0" * 64
    assert secret.read_text().count(SECRET) == 1


def test_a_linked_video_is_not_listed_served_played_or_deleted(server, tmp_path):
    folder = server.recordings / "cam"
    folder.mkdir(parents=True, exist_ok=True)
    secret = _secret_file(tmp_path / "outside" / "secret.mp4")
    link = folder / "cam_20260102_000000.mp4"
    link.symlink_to(secret)
    # And a link to a real recording outside the root: /play would replay it.
    elsewhere = make_recording(tmp_path / "elsewhere", "cam", 1)
    played = folder / elsewhere.name
    played.symlink_to(elsewhere)
    api = f"{server.url}/api/recordings/cam"

    listed = [r["file"] for r in _listing(server).json()["recordings"]]
    assert link.name not in listed and played.name not in listed
    assert _listing(server, stream="cam").json()["count"] == 0
    _refused(httpx.get(f"{api}/{link.name}", timeout=10))
    _refused(httpx.get(f"{api}/{link.name}", headers={"Range": "bytes=0-99"}, timeout=10))
    assert httpx.head(f"{api}/{link.name}", timeout=10).status_code == 404
    _refused(httpx.get(f"{api}/{played.name}/play", timeout=10))
    _refused(httpx.delete(f"{api}/{link.name}", timeout=10))
    _refused(httpx.delete(f"{api}/{played.name}", timeout=10))
    assert secret.read_text().count(SECRET) == 1
    assert elsewhere.exists() and elsewhere.with_suffix(".json").exists()
    assert link.is_symlink() and played.is_symlink()  # not ours: left where they are


def test_a_linked_stream_folder_is_outside_the_root(server, tmp_path):
    outside = make_recording(tmp_path / "elsewhere", "linked", 1)
    server.recordings.mkdir(parents=True, exist_ok=True)
    (server.recordings / "linked").symlink_to(outside.parent, target_is_directory=True)
    api = f"{server.url}/api/recordings/linked"

    listing = _listing(server)
    assert all(r["stream_name"] != "linked" for r in listing.json()["recordings"])
    assert _listing(server, stream="linked").json()["count"] == 0
    assert httpx.get(f"{api}/{outside.name}", timeout=10).status_code == 404
    assert httpx.head(f"{api}/{outside.name}", timeout=10).status_code == 404
    assert httpx.get(f"{api}/{outside.with_suffix('.json').name}", timeout=10).status_code == 404
    assert httpx.get(f"{api}/{outside.name}/play", timeout=10).status_code == 404
    assert httpx.delete(f"{api}/{outside.name}", timeout=10).status_code == 404
    assert outside.exists() and outside.with_suffix(".json").exists()


def test_a_hard_link_is_a_file_of_the_root(server, tmp_path):
    original = tmp_path / "outside" / "original.mp4"
    original.parent.mkdir(parents=True)
    original.write_bytes(bytes(range(256)) * 4)
    folder = server.recordings / "cam"
    folder.mkdir(parents=True, exist_ok=True)
    name = folder / "cam_20260103_000000.mp4"
    os.link(original, name)
    url = f"{server.url}/api/recordings/cam/{name.name}"

    [entry] = [r for r in _listing(server).json()["recordings"] if r["file"] == name.name]
    assert entry["size_bytes"] == 1024
    assert httpx.get(url, timeout=10).content == original.read_bytes()
    part = httpx.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert part.status_code == 206 and part.content == bytes(range(10, 20))
    assert httpx.delete(url, timeout=10).status_code == 200
    assert not name.exists()
    assert original.read_bytes() == bytes(range(256)) * 4  # its other name stays


def test_a_recordings_root_that_is_itself_a_link_is_served(start_server, tmp_path):
    # The root is the operator's choice (e.g. recordings -> /mnt/disk/recordings):
    # only what lies below it must not be a link.
    real_root = tmp_path / "disk" / "recordings"
    video = make_recording(real_root, "cam", 1)
    workdir = tmp_path / "srv"
    workdir.mkdir()
    (workdir / "recordings").symlink_to(real_root, target_is_directory=True)
    server = start_server(workdir=workdir)
    url = f"{server.url}/api/recordings/cam/{video.name}"

    assert [r["file"] for r in _listing(server).json()["recordings"]] == [video.name]
    assert httpx.get(url, timeout=10).content == video.read_bytes()
    assert httpx.delete(url, timeout=10).status_code == 200
    assert not video.exists() and not video.with_suffix(".json").exists()


def _links_to_old_recordings(root, elsewhere):
    """A linked stream folder and a folder of linked files, both reaching old recordings
    outside the root; returns the outside videos."""
    via_folder = make_recording(elsewhere, "linked", 10)
    (root / "linked").symlink_to(via_folder.parent, target_is_directory=True)
    via_files = make_recording(elsewhere, "cam", 9)
    (root / "cam").mkdir()
    (root / "cam" / via_files.name).symlink_to(via_files)
    sidecar = via_files.with_suffix(".json")
    (root / "cam" / sidecar.name).symlink_to(sidecar)
    return [via_folder, via_files]


def test_retention_leaves_what_links_reach(start_server, tmp_path):
    server = start_server(
        {
            "cleanup": {"interval_seconds": 3600, "schedule_time": far_schedule()},
            "recording": {"retention_days": 2},
        }
    )
    wait_for(lambda: "cleanup of" in server.output(), what="the start-up sweep")
    root = server.recordings
    root.mkdir(parents=True, exist_ok=True)
    outside = _links_to_old_recordings(root, tmp_path / "elsewhere")
    expired = make_recording(root, "real", 10)  # the control: retention does delete
    run = f"{server.url}/api/cleanup/run"

    preview = httpx.post(f"{run}?dry_run=true", timeout=10).json()
    assert [r["file"] for r in preview["recordings"]] == [expired.name]
    assert preview["directories"] == ["real"]
    done = httpx.post(f"{run}?dry_run=false", timeout=10).json()
    assert [r["file"] for r in done["recordings"]] == [expired.name]
    assert done["directories"] == ["real"]
    assert done["freed_bytes"] == preview["freed_bytes"]
    assert not expired.exists()
    for video in outside:
        assert video.exists() and video.with_suffix(".json").exists()
    assert (root / "linked").is_symlink() and (root / "cam" / outside[1].name).is_symlink()


def test_the_disk_guard_neither_counts_nor_deletes_what_links_reach(start_server, tmp_path):
    workdir = tmp_path / "srv"
    root = workdir / "recordings"
    kept = make_recording(root, "real", 1)
    outside = _links_to_old_recordings(root, tmp_path / "elsewhere")
    # Room for the real recording alone: counting any linked one puts the total over.
    cap = size_of(kept) + 16
    server = start_server(
        {
            "cleanup": {"interval_seconds": 3600, "schedule_time": far_schedule()},
            "recording": {"retention_days": 0, "max_total_gb": cap / GIB},
        },
        workdir=workdir,
    )
    done = httpx.post(f"{server.url}/api/cleanup/run?dry_run=false", timeout=10).json()
    assert done["recordings"] == []
    assert done["disk"]["recordings_bytes"] == size_of(kept)
    assert kept.exists()
    for video in outside:
        assert video.exists() and video.with_suffix(".json").exists()
