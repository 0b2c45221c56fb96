"""Where Tune keeps each study's experiment state and trial checkpoints, as a pyarrow filesystem.

One setting (``Settings.storage``) names it: a path on a filesystem every Ray node mounts (the
default ``<data_dir>/ray_results``, an NFS export, the compose volume) or an object store URI
``s3://bucket/prefix`` (``Settings.storage_endpoint_url`` for an S3-compatible store: MinIO, Ceph,
moto). Since Ray 2.7 Tune does not copy checkpoints to the head, so a study that spans nodes needs
one of these. The runner hands the filesystem to Tune (``RunConfig(storage_filesystem=...)``); the
API reads checkpoints back through the same filesystem to serve them. Object-store credentials are
the standard ones (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or an instance role) in the
environment of every Ray node and of the API; Caviar never carries them in a job or a pickle.

Ray-free and torch-free: the API imports it.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from service.settings import Settings

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint directories: checkpoint_000007
MANIFEST = "caviar.json"  # added to a downloaded checkpoint: what it is and how to rebuild the model


@dataclass(frozen=True)
class Storage:
    fs: pafs.FileSystem
    root: str  # the path within fs under which each study has its experiment directory
    uri: str  # what a person reads: /data/ray_results or s3://bucket/prefix

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def experiment(self, study_id: str) -> str:
        return f"{self.root}/{study_id}"

    def filesystem_arg(self) -> dict[str, Any]:
        """``storage_filesystem`` for Tune (RunConfig, Tuner.restore, can_restore): none for a local path."""
        return {} if self.local else {"storage_filesystem": self.fs}

    def tune_args(self) -> dict[str, Any]:
        """``storage_path`` (and ``storage_filesystem`` for an object store) as Tune's RunConfig takes them."""
        return {"storage_path": self.root, **self.filesystem_arg()}

    def read_checkpoint_file(self, study_id: str, checkpoint: str, name: str) -> bytes:
        """A file of a checkpoint (``<trial dir>/<checkpoint dir>``) of the study's experiment."""
        with self.fs.open_input_stream(f"{self.experiment(study_id)}/{checkpoint}/{name}") as f:
            data: bytes = f.read()
        return data

    def latest_checkpoint(self, study_id: str, trial_dir: str) -> str | None:
        """The path of the trial's newest checkpoint directory, or None when it has none."""
        selector = pafs.FileSelector(f"{self.experiment(study_id)}/{trial_dir}", allow_not_found=True)
        found = [i.path for i in self.fs.get_file_info(selector)
                 if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)]
        return max(found, key=lambda p: p.rsplit("/", 1)[-1]) if found else None

    def write_tar_gz(self, directory: str, manifest: dict[str, Any], out: IO[bytes]) -> None:
        """The checkpoint ``directory``'s files as a gzipped tar (at its top level), with ``caviar.json``."""
        base = directory.rstrip("/")
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
                if info.type != pafs.FileType.File:
                    continue
                member = tarfile.TarInfo(info.path[len(base) + 1:])
                member.size = info.size or 0
                with self.fs.open_input_stream(info.path) as src:
                    tar.addfile(member, src)
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            member = tarfile.TarInfo(MANIFEST)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))

    def checkpoint_archive(self, directory: str, manifest: dict[str, Any]) -> IO[bytes]:
        """The archive in a temporary file (in memory up to 64 MiB), rewound for reading."""
        out = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # the caller streams and closes it
        self.write_tar_gz(directory, manifest, out)
        out.seek(0)
        return out


def open_storage(settings: Settings) -> Storage:
    """The study storage ``settings`` names (a local path is created if missing)."""
    uri = settings.storage or str(settings.data_dir / "ray_results")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        endpoint = urlparse(settings.storage_endpoint_url) if settings.storage_endpoint_url else None
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
            region=settings.storage_region or None,
        )
        return Storage(fs, f"{parsed.netloc}{parsed.path}".rstrip("/"), uri.rstrip("/"))
    if parsed.scheme and parsed.scheme != "file":
        raise ValueError(f"storage: {uri!r}: a path or s3://bucket/prefix")
    path = parsed.path if parsed.scheme == "file" else uri
    local = pafs.LocalFileSystem()
    local.create_dir(path, recursive=True)
    return Storage(local, path.rstrip("/") or "/", path)
