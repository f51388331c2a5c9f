"""A model's fingerprint: which vector space its vectors live in.

Two model directories give comparable vectors only if they run the same graph on the same input, so the
fingerprint is a digest of the graph file and of the files that say how input becomes tensors (the image
preprocessing settings; the text tokenizer). Paths, names and file times are left out: a copy of the same
model elsewhere has the same fingerprint, and an int8 copy of the same weights has another (its vectors
differ). A named model that is not on this machine (fastembed would download it) has no files to read: its
fingerprint is a digest of its name, marked ``name:`` so it is never taken for a file digest.

Kept small and separate so it can move onto the shared model loader; the digest is computed once per file
version per process (a ViT-B/32 graph is ~350 MB: about half a second).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What each kind of model reads besides model.onnx (preprocessor_config.json is JSON and digested in a
# canonical form, so re-indenting it changes nothing).
VISION_FILES = ("preprocessor_config.json",)
TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
GRAPH = "model.onnx"
DIGEST_CHARS = 16

_digests: dict[tuple[str, int, int], str] = {}
_fingerprints: dict[tuple[Any, ...], str] = {}


@dataclass(frozen=True)
class ModelId:
    """A model as a collection records it: the fingerprint decides; name and directory say where to load it."""

    fingerprint: str
    name: str
    directory: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "name": self.name, "directory": self.directory}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ModelId:
        directory = data.get("directory")
        return cls(str(data["fingerprint"]), str(data.get("name") or ""), None if directory is None else str(directory))

    def describe(self) -> str:
        return f"{self.fingerprint} ({self.directory or self.name})"


def _version(path: Path) -> tuple[str, int, int]:
    """A file's version as far as a digest cache is concerned: where it is, its size, when it last changed."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _file_digest(path: Path) -> str:
    key = _version(path)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def directory_fingerprint(directory: Path, extra_files: tuple[str, ...]) -> str:
    """The digest of ``directory``'s model.onnx and of those of ``extra_files`` it holds; computed once per
    version of those files per process (every word query asks: a real CLIP tokenizer.json is ~2 MB of JSON)."""
    present = [directory / name for name in extra_files if (directory / name).is_file()]
    key = (str(directory.resolve()), *(_version(path) for path in [directory / GRAPH, *present]))
    if key not in _fingerprints:
        digest = hashlib.sha256()
        digest.update(b"graph\0" + _file_digest(directory / GRAPH).encode())
        for path in present:
            if path.name.endswith(".json"):
                try:
                    content = json.dumps(
                        json.loads(path.read_text()), sort_keys=True, separators=(",", ":")
                    ).encode()
                except ValueError:
                    content = path.read_bytes()
            else:
                content = path.read_bytes()
            digest.update(f"\0{path.name}\0".encode() + hashlib.sha256(content).hexdigest().encode())
        _fingerprints[key] = digest.hexdigest()[:DIGEST_CHARS]
    return _fingerprints[key]


def name_fingerprint(name: str) -> str:
    return "name:" + hashlib.sha256(name.encode()).hexdigest()[:DIGEST_CHARS]


def model_id(name: str, directory: Path | None, extra_files: tuple[str, ...]) -> ModelId:
    """The fingerprint of a configured model: its directory's files, or its name when there are none here."""
    if directory is not None and (directory / GRAPH).is_file():
        return ModelId(directory_fingerprint(directory, extra_files), name, str(directory))
    return ModelId(name_fingerprint(name), name, None if directory is None else str(directory))
