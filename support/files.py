"""Files a run writes: atomically (a temporary name unique to the process, fsync, rename), never over a file the
user has without --overwrite, and temporary files a killed run left behind removed at the next start."""
import os
import tempfile

TMP_PREFIX = ".reft-tmp-"  # every temporary file this project writes starts with this


def remove_stale_temporaries(folder: str):
    """Temporary files of this project (TMP_PREFIX) left in folder and its sub-folders by a killed run."""
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TMP_PREFIX):
                try:
                    os.remove(os.path.join(root, name))
                except OSError:
                    pass


def atomic_write(path: str, write, mode: str = "wb"):
    """write(f) into a temporary file of this process beside path, fsync it, then rename it over path (and fsync
    the folder): a crash, SIGKILL or full disk leaves the old file or the new one, never a mix."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}{os.path.basename(path)}.{os.getpid()}.")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # the rename itself survives a power cut once the folder is synced
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_text(path: str, text: str):
    atomic_write(path, lambda f: f.write(text), mode="w")


def refuse_overwrite(path: str, overwrite: bool):
    """A file the user has (predictions, ...) is replaced only with --overwrite."""
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists: pass --overwrite to replace it")
