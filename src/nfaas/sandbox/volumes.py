"""Function volumes on the node: their directories, who owns them, and the uid their users share.

A function with ``volume:`` keeps one directory on the node, ``<data>/volumes/<namespace>/<name>``,
from its first instance until the function is removed: across restarts, scale-to-zero, updates
and platform restarts. Instances run under uids the drivers hand out per instance, so the
directory changes hands: when an instance of a function starts and none of its other
instances runs on the driver, the whole tree is given to the new instance's uid (without
following symbolic links). Instances that run at the same time share that uid (``SharedUids``),
so that each can write what the others wrote, whatever file modes their program chose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from nfaas.sandbox.uids import FIRST_UID, UidPool

VolumeKey = tuple[str, str]  # (namespace, function name)


def volumes_root(data_dir: Path) -> Path:
    return data_dir / "volumes"


def volume_dir(root: Path, key: VolumeKey) -> Path:
    namespace, name = key
    return root / namespace / name


def ensure_volume(root: Path, key: VolumeKey) -> Path:
    """The function's directory, created on first use. Its parents are root's and only
    traversable (instances of the process tier walk through them), the directory itself is
    private to its owner."""
    folder = volume_dir(root, key)
    for parent in (root, folder.parent):
        parent.mkdir(mode=0o711, exist_ok=True)
        parent.chmod(0o711)
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def prepare_volume(root: Path, key: VolumeKey, uid: int, first: bool) -> Path:
    """The function's directory, ready for an instance running as ``uid``: handed over to it
    when no other instance of the function runs (``first``), or when it is not the uid's
    although one does (created anew under it after a remove, say)."""
    folder = ensure_volume(root, key)
    if uid >= 0 and (first or folder.stat().st_uid != uid):
        hand_over(folder, uid)
    return folder


def hand_over(folder: Path, uid: int) -> None:
    """Give the tree to ``uid`` (and its group, gid = uid). Symbolic links are changed, never
    followed: an instance may have left one pointing anywhere on the node. A file with other
    hard links that no instance owns is left alone: a process-tier instance could have linked
    a node file it may write into the volume, to be given it."""
    if uid < 0:
        return  # instances run as the platform's own uid: nothing changes hands
    for top, dirs, files, dir_fd in os.fwalk(folder, follow_symlinks=False):
        os.chown(dir_fd, uid, uid)
        if top == str(folder):
            os.chmod(dir_fd, 0o700)  # only its owner enters it
        for name in (*dirs, *files):
            # gone already: an earlier instance's leftover process may still be deleting
            with contextlib.suppress(FileNotFoundError):
                if _foreign_link(os.lstat(name, dir_fd=dir_fd)):
                    continue
                os.chown(name, uid, uid, dir_fd=dir_fd, follow_symlinks=False)


def _foreign_link(entry: os.stat_result) -> bool:
    return not stat.S_ISDIR(entry.st_mode) and entry.st_nlink > 1 and entry.st_uid < FIRST_UID


def remove_volume(root: Path, key: VolumeKey) -> None:
    """The function was removed: its data goes with it (and its namespace's folder, if empty)."""
    folder = volume_dir(root, key)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()


class SharedUids:
    """Hands out instance uids from ``pool``; instances of one function with a volume that
    run at the same time get the same one, which goes back to the pool after the last."""

    def __init__(self, pool: UidPool) -> None:
        self.pool = pool
        self._uid_of: dict[VolumeKey, int] = {}
        self._holders: dict[int, tuple[VolumeKey, int]] = {}  # uid -> its function, instances

    def owner(self, key: VolumeKey) -> int | None:
        """The uid the function's running instances have, if any runs."""
        return self._uid_of.get(key)

    def take(self, key: VolumeKey | None) -> tuple[int, bool]:
        """A uid for a new instance (of the function ``key`` if it has a volume), and whether
        the volume must be handed over to it (no other instance of the function holds it)."""
        if key is None:
            return self.pool.take(), False
        if key in self._uid_of:
            return self.join(key, self._uid_of[key])
        return self.join(key, self.pool.take())

    def join(self, key: VolumeKey, uid: int) -> tuple[int, bool]:
        """An instance of ``key`` that would run as ``uid``: the uid it must run as (the
        function's, when another of its instances runs) and whether it is the first."""
        if uid < 0:
            return uid, True
        owner = self._uid_of.get(key)
        if owner is None:
            self._uid_of[key] = uid
            self._holders[uid] = (key, 1)
            return uid, True
        held_by, count = self._holders[owner]
        self._holders[owner] = (held_by, count + 1)
        return owner, False

    def release(self, uid: int) -> None:
        """An instance that ran as ``uid`` is gone."""
        held = self._holders.get(uid)
        if held is None:
            self.pool.give_back(uid)
            return
        key, count = held
        if count > 1:
            self._holders[uid] = (key, count - 1)
            return
        del self._holders[uid]
        del self._uid_of[key]
        self.pool.give_back(uid)
