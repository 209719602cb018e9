"""Global-context vectors computed elsewhere (e.g. ImageBind with the original pipeline), read from a file.

`dsaml-preprocess global_vectors=file` imports them into the feature store (`dsaml.data.global_vectors`),
where the network reads them with `model.global_context=precomputed:<name>`.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def load_vector_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read global vectors keyed by song id from a .npz or .h5/.hdf5 file -> {song_id: float32 [1 or T, D_g]}.

    Each entry is one song: a [D_g] vector (stored as [1, D_g]), or [T, D_g] per-segment vectors. Keys are
    song ids (HDF5: top-level dataset names, or datasets inside a "global" group).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"global-vector file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as archive:
            raw = {key: archive[key] for key in archive.files}
    elif path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as handle:
            group = handle["global"] if "global" in handle else handle
            raw = {key: group[key][()] for key in group if isinstance(group[key], h5py.Dataset)}
    else:
        raise ValueError(f"global-vector file {path}: expected a .npz, .h5 or .hdf5 file")
    if not raw:
        raise ValueError(f"global-vector file {path} holds no vectors (expected one array per song id)")
    vectors = {}
    for key, value in raw.items():
        array = np.asarray(value, dtype=np.float32)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2:
            raise ValueError(
                f"global-vector file {path}, key {key!r}: shape {value.shape}, expected [D] or [T, D]"
            )
        vectors[str(key)] = array
    widths = {v.shape[1] for v in vectors.values()}
    if len(widths) != 1:
        raise ValueError(f"global-vector file {path}: vectors have different widths {sorted(widths)}")
    return vectors
