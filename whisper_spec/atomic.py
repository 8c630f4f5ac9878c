"""Writing files and directories so that a crash never leaves half of one under the final name.

Transcripts, manifests and converted model caches all go through here: the content is built beside
its destination under a hidden temporary name and renamed into place, which is atomic on one file
system. A reader sees the old content or all of the new, never a part.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

COMPLETE_MARKER = ".whisper_spec_complete"  # written last inside a directory built by ``atomic_directory``
_STALE_SECONDS = 6 * 3600  # temporary directories older than this were left by crashed processes


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that ``path`` holds either its old content or all of the new.

    The file gets the permissions an ordinary write would give it: those of the file it replaces, or for
    a new file 0666 less the umask (a temporary file from ``tempfile`` would be 0600, unreadable to a web
    server or a colleague).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            if path.exists():
                os.chmod(out.fileno(), stat.S_IMODE(path.stat().st_mode))
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_directory(final: Path, build: Callable[[Path], None], marker_text: str = "") -> Path:
    """Create directory ``final`` by running ``build(tmp_dir)`` in a sibling temp dir, then renaming.

    If ``final`` already exists and is complete it is returned as is. If another process renames its
    result into place first, ours is discarded and theirs used (both are equivalent).
    """
    if (final / COMPLETE_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(final.parent)
    if final.exists():  # an incomplete leftover (a crash before the marker, a manual copy): rebuild
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text(marker_text or str(time.time()))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / COMPLETE_MARKER).is_file():
                raise
            # lost a race against another process; its copy is as good as ours
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _sweep_stale(parent: Path) -> None:
    """Remove temporary directories left by crashed processes (old enough not to be in progress)."""
    now = time.time()
    for path in parent.glob(".*.tmp-*"):
        try:
            if now - path.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
