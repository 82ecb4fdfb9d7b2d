"""``volume:`` in a function's spec, and the node's side of volumes that needs no platform.

The spec: a valid volume lands in FunctionSpec and survives the API form and the registry's
JSON; a bad one is refused naming ``volume`` or ``volume.path`` (and, from a manifest, its
line). The node's side: a volume's tree changes hands without following links an instance
left in it, and instances of one function that run at the same time share one uid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfaas.core.manifest import ManifestError, parse_manifest
from nfaas.core.spec import (
    FunctionSpec,
    SpecError,
    Volume,
    spec_from_json,
    spec_to_dict,
    validate_spec,
)
from nfaas.sandbox import oci
from nfaas.sandbox.uids import UidPool
from nfaas.sandbox.volumes import (
    SharedUids,
    ensure_volume,
    hand_over,
    prepare_volume,
    remove_volume,
    volume_dir,
)


# -- the spec --------------------------------------------------------------------------------
@pytest.mark.parametrize("isolation", ["process", "container"])
@pytest.mark.parametrize("runtime", ["python", "command"])
def test_a_volume_lands_in_the_spec(isolation: str, runtime: str) -> None:
    raw: dict[str, Any] = {
        "runtime": runtime,
        "isolation": isolation,
        "volume": {"path": "/data/jetstream"},
    }
    if runtime == "command":
        raw["command"] = ["nats-server"]
    spec = validate_spec("f", raw)
    assert spec.volume == Volume(path="/data/jetstream")


def test_no_volume_by_default_and_null_is_none() -> None:
    assert validate_spec("f", {}).volume is None
    assert validate_spec("f", {"volume": None}).volume is None


@pytest.mark.parametrize("volume", [None, {"path": "/data"}, {"path": "/srv/state/v1"}])
def test_volume_round_trips_through_the_api_form_and_the_registry(volume: Any) -> None:
    raw = {"isolation": "container", "scale": {"max": 2}, **({"volume": volume} if volume else {})}
    spec = validate_spec("f", raw)
    again = spec_to_dict(spec)  # what `nfaas deploy` sends
    assert again["volume"] == volume
    again.pop("name")
    assert validate_spec("f", again) == spec
    assert spec_from_json(msgspec.json.encode(spec)) == spec  # what the registry stores


def test_a_spec_stored_before_volumes_existed_has_none() -> None:
    stored = msgspec.json.encode(validate_spec("f", {}))
    old = msgspec.json.decode(stored)
    del old["volume"]
    assert spec_from_json(msgspec.json.encode(old)).volume is None


@pytest.mark.parametrize(
    ("volume", "field", "text"),
    [
        ("/data", "volume", "expected a mapping"),
        (["/data"], "volume", "expected a mapping"),
        ({}, "volume.path", "required"),
        ({"path": "/data", "size": "1Gi"}, "volume.size", "unknown key 'size' (allowed: path)"),
        ({"path": 7}, "volume.path", "expected an absolute path"),
        ({"path": None}, "volume.path", "expected an absolute path"),
        ({"path": ""}, "volume.path", "must be an absolute path"),
        ({"path": "data"}, "volume.path", "must be an absolute path, got 'data'"),
        ({"path": "./data"}, "volume.path", "must be an absolute path"),
        ({"path": "/"}, "volume.path", "cannot be /"),
        ({"path": "/data/"}, "volume.path", "normalised path ('/data')"),
        ({"path": "//data"}, "volume.path", "normalised path ('/data')"),
        ({"path": "/data//x"}, "volume.path", "normalised path ('/data/x')"),
        ({"path": "/data/./x"}, "volume.path", "normalised path ('/data/x')"),
        ({"path": "/data/../etc"}, "volume.path", "normalised path ('/etc')"),
        ({"path": "/.."}, "volume.path", "normalised path ('/')"),
        ({"path": "/da\nta"}, "volume.path", "control characters"),
        ({"path": "/da\0ta"}, "volume.path", "control characters"),
        ({"path": "/" + "x" * 1024}, "volume.path", "at most 1024 characters"),
        ({"path": "/proc"}, "volume.path", "inside /proc"),
        ({"path": "/proc/self"}, "volume.path", "inside /proc"),
        ({"path": "/sys/fs"}, "volume.path", "inside /sys"),
        ({"path": "/dev/shm"}, "volume.path", "inside /dev"),
        ({"path": "/code"}, "volume.path", "inside /code"),
        ({"path": "/tmp/data"}, "volume.path", "inside /tmp"),
        ({"path": "/usr/local/data"}, "volume.path", "inside /usr"),
        ({"path": "/lib64"}, "volume.path", "inside /lib64"),
    ],
)
def test_bad_volumes_name_the_field(volume: Any, field: str, text: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_spec("f", {"isolation": "container", "volume": volume})
    assert caught.value.field == field
    assert text in caught.value.message


def test_paths_that_only_start_like_a_reserved_one_are_fine() -> None:
    for path in ("/devices", "/codes", "/tmpdata", "/proc2", "/usrdata", "/data/proc"):
        assert validate_spec("f", {"volume": {"path": path}}).volume == Volume(path)


def test_the_microvm_tier_refuses_a_volume() -> None:
    with pytest.raises(SpecError) as caught:
        validate_spec("f", {"isolation": "microvm", "volume": {"path": "/data"}})
    assert caught.value.field == "volume"
    assert "isolation process or container" in caught.value.message


@given(st.text(min_size=1, max_size=40))
def test_any_path_is_either_accepted_as_written_or_refused_naming_it(text: str) -> None:
    try:
        spec = validate_spec("f", {"volume": {"path": text}})
    except SpecError as exc:
        assert exc.field == "volume.path"
        return
    assert spec.volume is not None and spec.volume.path == text
    assert text.startswith("/") and os.path.normpath(text) == text and text != "/"


def test_a_manifest_error_points_at_the_line_of_the_path() -> None:
    text = "functions:\n  f:\n    handler: ./f\n    volume:\n      path: data\n"
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, "stack.yml")
    assert str(caught.value).startswith("stack.yml:5: functions.f.volume.path: must be an absolute")


def test_a_manifest_volume_lands_in_the_spec() -> None:
    text = (
        "functions:\n  f:\n    handler: ./f\n    isolation: container\n    volume: {path: /data}\n"
    )
    spec = parse_manifest(text).functions["f"].spec
    assert isinstance(spec, FunctionSpec) and spec.volume == Volume("/data")


# -- the node's side ---------------------------------------------------------------------------
UID = 231_071  # an instance uid no one on the machine has


@pytest.mark.skipif(os.getuid() != 0, reason="changing owners needs root")
def test_the_tree_changes_hands_but_links_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "volumes"
    folder = ensure_volume(root, ("ns", "fn"))
    assert folder == volume_dir(root, ("ns", "fn"))
    assert (root.stat().st_mode & 0o777, folder.parent.stat().st_mode & 0o777) == (0o711, 0o711)
    outside = tmp_path / "host-file"
    outside.write_text("the node's")
    (folder / "sub").mkdir()
    (folder / "sub" / "data").write_text("x")
    (folder / "link-to-host-file").symlink_to(outside)
    (folder / "link-to-host-dir").symlink_to(tmp_path)
    os.link(outside, folder / "hard-link-to-host-file")
    (folder / "mine").write_text("an instance's")
    os.chown(folder / "mine", UID - 1, UID - 1)
    os.link(folder / "mine", folder / "mine-too")  # its own hard link: handed over
    folder.chmod(0o755)

    hand_over(folder, UID)

    for path in (folder, folder / "sub", folder / "sub" / "data"):
        assert (path.stat().st_uid, path.stat().st_gid) == (UID, UID)
    assert os.lstat(folder / "link-to-host-file").st_uid == UID  # the link itself
    assert outside.stat().st_uid == 0 and tmp_path.stat().st_uid == 0  # not what it points at
    assert (folder / "mine").stat().st_uid == UID
    assert folder.stat().st_mode & 0o777 == 0o700

    remove_volume(root, ("ns", "fn"))
    assert not folder.exists() and not folder.parent.exists() and outside.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="changing owners needs root")
def test_a_joining_instance_takes_the_volume_over_only_if_it_is_not_its_uids(
    tmp_path: Path,
) -> None:
    root = tmp_path / "volumes"
    folder = prepare_volume(root, ("ns", "fn"), UID, first=False)  # new: root's, handed over
    assert folder.stat().st_uid == UID
    (folder / "theirs").write_text("x")  # root's: the walk would change it
    prepare_volume(root, ("ns", "fn"), UID, first=False)  # already the uid's: no walk
    assert (folder / "theirs").stat().st_uid == 0
    prepare_volume(root, ("ns", "fn"), UID, first=True)  # the first instance: the whole tree
    assert (folder / "theirs").stat().st_uid == UID


def test_removing_a_volume_that_never_existed_is_fine(tmp_path: Path) -> None:
    remove_volume(tmp_path / "volumes", ("ns", "never"))
    ensure_volume(tmp_path / "volumes", ("ns", "kept"))
    remove_volume(tmp_path / "volumes", ("ns", "never"))
    assert (tmp_path / "volumes" / "ns" / "kept").is_dir()  # the namespace keeps its others


class RootPool(UidPool):
    """A UidPool that hands out uids whoever runs the test (the real one needs root)."""

    def __init__(self) -> None:
        super().__init__(first=500, count=4)
        self.enabled = True


def test_instances_of_one_function_share_a_uid_while_any_runs() -> None:
    pool = RootPool()
    uids = SharedUids(pool)
    first, hand = uids.take(("ns", "a"))
    assert hand and uids.owner(("ns", "a")) == first
    second, hand = uids.take(("ns", "a"))
    assert (second, hand) == (first, False)
    other, hand = uids.take(("ns", "b"))
    plain, hand_plain = uids.take(None)
    assert len({first, other, plain}) == 3 and hand and not hand_plain

    uids.release(first)
    assert uids.owner(("ns", "a")) == first and first not in pool._free
    uids.release(first)
    assert uids.owner(("ns", "a")) is None and first in pool._free
    _, hand = uids.take(("ns", "a"))  # the next instance takes the volume over
    assert hand


def test_a_shell_joins_under_the_functions_uid() -> None:
    """The process tier: a shell forked as ``mine`` learns the uid it must run as."""
    pool = RootPool()
    uids = SharedUids(pool)
    mine = pool.take()
    assert uids.join(("ns", "a"), mine) == (mine, True)
    theirs = pool.take()
    assert uids.join(("ns", "a"), theirs) == (mine, False)  # re-forked as ``mine``
    uids.release(theirs)  # the discarded shell's exit: not the function's, back to the pool
    assert theirs in pool._free and uids.owner(("ns", "a")) == mine
    uids.release(mine)
    uids.release(mine)
    assert mine in pool._free and uids.owner(("ns", "a")) is None


def test_without_root_everything_runs_as_the_platform() -> None:
    pool = UidPool()
    pool.enabled = False
    uids = SharedUids(pool)
    assert uids.take(("ns", "a")) == (-1, True)
    assert uids.join(("ns", "a"), -1) == (-1, True)
    uids.release(-1)
    assert uids.owner(("ns", "a")) is None


def test_container_mount_points_stay_clear_of_the_containers_own_mounts(tmp_path: Path) -> None:
    binds = ["/usr", "/opt/venv", "/srv/nfaas/src"]
    point = oci.volume_mount_point(tmp_path, "/data/js", binds)
    assert point == tmp_path / "data" / "js" and point.is_dir()
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o755
    for path, taken in (("/opt/venv/x", "/opt/venv"), ("/srv", "/srv/nfaas/src"), ("/tmp", "/tmp")):
        with pytest.raises(ValueError, match=f"overlaps {taken}"):
            oci.volume_mount_point(tmp_path, path, binds)
    (tmp_path / "bin").symlink_to("usr/bin")
    with pytest.raises(ValueError, match="symbolic link"):
        oci.volume_mount_point(tmp_path, "/bin/x", [])
