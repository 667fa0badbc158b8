"""Files and folders that are either complete or absent.

Every writer of the package that must not leave a half-written file behind
(checkpoint manifests, flags.json, metrics trims, exports, reports,
vocabularies) goes through here: write under a temporary name in the same
folder, flush to disk, rename into place (a rename within one file system is
atomic). Imports nothing of the package.
"""

import json
import os
import shutil
import tempfile


def fsync_file(path):
    """Flushes a written file's data to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_directory(directory):
    """Flushes a folder's entries (renames) to disk, where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path, data):
    """Writes `data` to `path` through a temporary file and a rename."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path, text):
    """Writes `text` (UTF-8) to `path` through a temporary file and a rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, value, **dump_options):
    """`write_text_atomic` of `json.dumps(value, **dump_options)` + newline."""
    write_text_atomic(path, json.dumps(value, **dump_options) + "\n")


def replace_directory_atomic(target, write):
    """Calls `write(staging_dir)`, then renames the staging folder onto
    `target` (an existing `target` is replaced whole); returns `target`.

    On any failure the staging folder is removed and `target` is untouched.
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-partial-", dir=parent)
    try:
        write(staging)
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-old-", dir=parent)
            os.rmdir(old)
            os.replace(target, old)
        os.replace(staging, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
