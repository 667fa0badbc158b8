"""Checkpoints that are committed atomically and verified before restore.

Layout of `model_dir/checkpoints/`:

    ckpt-N.index, ckpt-N.data-00000-of-00001   TF checkpoint files of step N
    ckpt-N.manifest.json                        size + CRC-32 of each file
    checkpoint                                  TF's state file (for TF tools)

Saving step N (`CheckpointWriter.save`):

1. every worker writes the TF checkpoint under a staging folder
   (`.staging-N/`; non-chief workers into their own temporary folder, as
   multi-worker saving is collective);
2. the chief hashes the staged files and renames them into place, data first;
3. the chief renames the manifest into place: this is the commit. A
   checkpoint without its manifest does not exist;
4. the `checkpoint` state file is rewritten (write + rename) and checkpoints
   beyond `max_to_keep` are deleted (manifest first).

A process killed at any moment leaves either the previous committed
checkpoints (plus leftovers that the next start removes, saying so) or the
new one. Restore (`restore_latest`) tries committed checkpoints newest first:
the files must match their manifest, then TensorFlow must restore them; a
checkpoint that fails is reported with a warning naming it and the one used
instead. When checkpoints exist but none restores, `CheckpointError` is
raised: a run never starts over silently.

Test hook: `TF_MBALIGN_TEST_PAUSE_IN_SAVE=N` makes the save of step N stop
half-way through the commit (data file renamed into place, index and
manifest not yet), write `.paused-in-save` into the checkpoint folder and
sleep until the process is killed. The kill tests use it to kill a run
inside a checkpoint write; never set it otherwise.
"""

import glob
import json
import os
import re
import shutil
import time
import zlib

import tensorflow as tf

from tf_mbalign.atomic_files import fsync_directory, fsync_file, write_text_atomic

MANIFEST_SUFFIX = ".manifest.json"
STATE_FILE = "checkpoint"
PAUSE_ENV = "TF_MBALIGN_TEST_PAUSE_IN_SAVE"
PAUSE_MARKER = ".paused-in-save"
_MANIFEST_RE = re.compile(r"^ckpt-(\d+)\.manifest\.json$")
_HASH_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be restored; the message lists why."""


def checkpoint_prefix(directory, step):
    return os.path.join(directory, f"ckpt-{step}")


def file_digest(path):
    """CRC-32 (hex) of a file, read in 1 MiB chunks.

    It guards against truncation and corrupted bytes, not against tampering
    (whoever can write the checkpoints can rewrite the manifest too); CRC-32
    runs at ~2 GB/s here against ~0.9 GB/s for SHA-256, which matters for
    multi-GB checkpoints hashed at every save.
    """
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def committed_steps(directory):
    """Steps of the committed checkpoints in `directory`, newest first."""
    if not os.path.isdir(directory):
        return []
    steps = [int(m.group(1)) for m in map(_MANIFEST_RE.match, os.listdir(directory)) if m]
    return sorted(steps, reverse=True)


def _checkpoint_files(prefix):
    return sorted(glob.glob(glob.escape(prefix) + ".index")
                  + glob.glob(glob.escape(prefix) + ".data-*"))


def _pause_if_requested(directory, step):
    if os.environ.get(PAUSE_ENV) != str(step):
        return
    with open(os.path.join(directory, PAUSE_MARKER), "w", encoding="utf-8") as f:
        f.write(f"{step}\n")
    while True:  # The test harness kills the process here.
        time.sleep(1)


class CheckpointWriter:
    """Saves `checkpoint` atomically into `directory` (see module docstring).

    Args:
        checkpoint: a `tf.train.Checkpoint`.
        directory: the committed checkpoints' folder (on the chief).
        max_to_keep: committed checkpoints kept.
        chief: whether this process commits; other workers write their part
            (saving is collective under MultiWorkerMirroredStrategy) into
            `worker_directory` and delete it.
        worker_directory: scratch folder of a non-chief worker.
        log: callable for messages.
    """

    def __init__(self, checkpoint, directory, max_to_keep=3, chief=True,
                 worker_directory=None, log=print):
        self.checkpoint = checkpoint
        # Created now, so that `write()` saves it and restores match it.
        _ = checkpoint.save_counter
        self.directory = directory
        self.max_to_keep = max(1, max_to_keep)
        self.chief = chief
        self.worker_directory = worker_directory
        self.log = log

    def remove_leftovers(self):
        """Deletes what killed saves left behind: staging folders and files of
        checkpoints that were never committed (the chief says what it removed;
        other workers clear their scratch folder)."""
        if not self.chief:
            if self.worker_directory:
                for staging in glob.glob(os.path.join(self.worker_directory, ".staging-*")):
                    shutil.rmtree(staging, ignore_errors=True)
            return []
        if not os.path.isdir(self.directory):
            return []
        removed = []
        for staging in glob.glob(os.path.join(self.directory, ".staging-*")):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(os.path.basename(staging))
        committed = set(committed_steps(self.directory))
        committed |= {int(p.rsplit("-", 1)[-1]) for p in _legacy_candidates(self.directory)}
        for path in glob.glob(os.path.join(self.directory, "ckpt-*")):
            match = re.match(r"^ckpt-(\d+)\.(index|data-.*)$", os.path.basename(path))
            if match and int(match.group(1)) not in committed:
                os.remove(path)
                removed.append(os.path.basename(path))
        marker = os.path.join(self.directory, PAUSE_MARKER)
        if os.path.exists(marker):
            os.remove(marker)
        if removed:
            self.log(f"removed unfinished checkpoint writes in {self.directory}: "
                     f"{', '.join(sorted(removed))}")
        return removed

    def save(self, step, metadata=None):
        """Writes and commits the checkpoint of `step`; returns its prefix."""
        if not self.chief:
            scratch = os.path.join(self.worker_directory, f".staging-{step}")
            self.checkpoint.write(checkpoint_prefix(scratch, step))
            shutil.rmtree(scratch, ignore_errors=True)
            return None
        os.makedirs(self.directory, exist_ok=True)
        staging = os.path.join(self.directory, f".staging-{step}")
        shutil.rmtree(staging, ignore_errors=True)
        staged_prefix = self.checkpoint.write(checkpoint_prefix(staging, step))
        files = {}
        for path in _checkpoint_files(staged_prefix):
            fsync_file(path)
            files[os.path.basename(path)] = {"bytes": os.path.getsize(path),
                                             "crc32": file_digest(path)}
        manifest = dict(metadata or {}, step=step, format=1, files=files)
        final_prefix = checkpoint_prefix(self.directory, step)
        manifest_path = final_prefix + MANIFEST_SUFFIX
        if os.path.exists(manifest_path):  # A stale (e.g. corrupt) one: uncommit it first.
            os.remove(manifest_path)
        # Data files first, the index after them, the manifest last (the commit).
        names = sorted(files, key=lambda name: name.endswith(".index"))
        for number, name in enumerate(names):
            os.replace(os.path.join(staging, name), os.path.join(self.directory, name))
            if number == 0:
                _pause_if_requested(self.directory, step)
        staged_manifest = os.path.join(staging, os.path.basename(manifest_path))
        with open(staged_manifest, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        fsync_directory(self.directory)
        os.replace(staged_manifest, manifest_path)
        fsync_directory(self.directory)
        shutil.rmtree(staging, ignore_errors=True)
        self._delete_old_and_write_state()
        return final_prefix

    def _delete_old_and_write_state(self):
        steps = committed_steps(self.directory)
        for old in steps[self.max_to_keep:]:
            prefix = checkpoint_prefix(self.directory, old)
            os.remove(prefix + MANIFEST_SUFFIX)  # Uncommit first, then the files.
            for path in _checkpoint_files(prefix):
                os.remove(path)
        kept = sorted(steps[: self.max_to_keep])
        lines = [f'model_checkpoint_path: "ckpt-{kept[-1]}"']
        lines += [f'all_model_checkpoint_paths: "ckpt-{s}"' for s in kept]
        write_text_atomic(os.path.join(self.directory, STATE_FILE), "\n".join(lines) + "\n")


def verify(prefix):
    """Raises `CheckpointError` unless the files of `prefix` match its manifest."""
    manifest_path = prefix + MANIFEST_SUFFIX
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"unreadable manifest {manifest_path} ({error})") from None
    if not any(name.endswith(".index") for name in files):
        raise CheckpointError(f"{manifest_path} lists no .index file")
    directory = os.path.dirname(prefix)
    for name, expected in sorted(files.items()):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing")
        size = os.path.getsize(path)
        if size != expected["bytes"]:
            raise CheckpointError(
                f"{path} has {size} bytes, the manifest says {expected['bytes']} (truncated?)"
            )
        if file_digest(path) != expected.get("crc32"):
            raise CheckpointError(f"{path} does not match its CRC-32 in the manifest (corrupted)")
    return manifest


def _legacy_candidates(directory):
    """Checkpoints named by a TF state file but without manifests (older runs)."""
    if not os.path.isfile(os.path.join(directory, STATE_FILE)):
        return []
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError):  # An unreadable state file names nothing.
        return []
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    paths = [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths]
    return sorted(set(paths), key=lambda p: int(p.rsplit("-", 1)[-1]), reverse=True)


def restore_latest(checkpoint, directory, warn, partial=False):
    """Restores the newest checkpoint of `directory` that is intact.

    Args:
        checkpoint: the `tf.train.Checkpoint` to restore into.
        directory: the committed checkpoints' folder.
        warn: callable for warnings (a fallback names the failed and the
            restored checkpoint).
        partial: restore only what `checkpoint` holds (`expect_partial`)
            instead of requiring every saved object to match.

    Returns:
        The restored prefix, or None when `directory` holds no checkpoint.

    Raises:
        CheckpointError: checkpoints exist but none could be restored.
    """
    candidates = [(checkpoint_prefix(directory, s), True) for s in committed_steps(directory)]
    if not candidates:
        candidates = [(p, False) for p in _legacy_candidates(directory)]
    failures = []
    for prefix, has_manifest in candidates:
        try:
            if has_manifest:
                verify(prefix)
            status = checkpoint.restore(prefix)
            if partial:
                status.expect_partial()
            else:
                status.assert_existing_objects_matched()
        except (CheckpointError, tf.errors.OpError, AssertionError, ValueError) as error:
            reason = str(error).strip().splitlines()[0][:300]
            failures.append((prefix, reason))
            continue
        if failures:
            failed = "; ".join(f"{p} ({r})" for p, r in failures)
            warn(f"could not restore {failed}. Restored the previous checkpoint {prefix} "
                 "instead; the steps after it are trained again.")
        return prefix
    if failures:
        listed = "\n  ".join(f"{p}: {r}" for p, r in failures)
        raise CheckpointError(
            f"{directory}: no checkpoint can be restored:\n  {listed}\n"
            "Nothing was trained. Restore the folder from a backup, or start a new run "
            "with another --model_dir (or delete the checkpoints folder to start over)."
        )
    return None
