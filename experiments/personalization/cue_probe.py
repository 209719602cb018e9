"""Does a trained model keep the music's separate cues? A linear probe of its features on a lens corpus.

    cd experiments/personalization && python cue_probe.py --ckpt <dmer.ckpt> \
        --store ../../data/stores/synthetic_lens.h5 --corpus ../../data/synthetic/lens

For every test song: the body's output `encoded` [T, D] and the read-out input z [T, d] (lens_eval.Song,
non-overlapping windows), and the song's true cue curves and mean-listener curves at its segments (segment i
is curve value 30 + i). Per curve: a ridge probe (features standardised, penalty `--penalty` x segments / 100)
fitted on all songs but one and correlated with the curve on the held-out song, pooled over the songs. A cue
that the probe of z cannot recover cannot be reached by refitting the read-out (adaptation=ridge).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from lens_eval import Song, readout_inputs  # this folder's lens_eval.py

from dsaml.data.datamodule import DSAMLDataModule
from dsaml.data.synth import load_truth
from dsaml.models.checkpoint import load_network
from dsaml.reporting import markdown


def probe(features: list[np.ndarray], targets: list[np.ndarray], penalty: float) -> float:
    """Leave-one-song-out ridge probe -> correlation of the pooled held-out predictions with the targets."""
    predicted = []
    for held in range(len(features)):
        x = np.concatenate([f for j, f in enumerate(features) if j != held])
        y = np.concatenate([t for j, t in enumerate(targets) if j != held])
        mean, std = x.mean(0), x.std(0) + 1e-8
        x = (x - mean) / std
        w = np.linalg.solve(x.T @ x + penalty * len(x) / 100 * np.eye(x.shape[1]), x.T @ (y - y.mean()))
        predicted.append((features[held] - mean) / std @ w + y.mean())
    return float(np.corrcoef(np.concatenate(predicted), np.concatenate(targets))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--penalty", type=float, default=1.0)
    args = parser.parse_args()
    net, _, hparams = load_network(args.ckpt)
    net.eval()
    window = int(hparams["task"].get("support_segments", 60))
    truth = load_truth(args.corpus)
    data = DSAMLDataModule(args.store, task="pdmer", shots=1, cross_support="song", seed=0)
    start = truth["label_start_index"]
    encoded, readout, curves = [], [], {}
    for song_id in sorted(data.reader.store.song_ids("test")):
        item = data.reader.item(song_id, None)
        song = Song(net, item, window)
        with torch.no_grad():
            encoded.append(song.per_segment(song.encoded_windows).double().numpy())
        readout.append(readout_inputs(net, song).numpy())
        n = len(item["arousal"])
        info = truth["songs"][str(song_id)]
        for name, curve in {
            **info["cues"],
            "mean arousal": info["arousal"],
            "mean valence": info["valence"],
        }.items():
            curves.setdefault(name, []).append(np.asarray(curve)[start : start + n])
    rows = [
        [name, f"{probe(encoded, values, args.penalty):.2f}", f"{probe(readout, values, args.penalty):.2f}"]
        for name, values in curves.items()
    ]
    header = [
        "curve",
        f"body output ({encoded[0].shape[1]} features)",
        f"read-out input z ({readout[0].shape[1]})",
    ]
    print(f"{len(encoded)} test songs, {sum(len(e) for e in encoded)} segments\n\n{markdown(header, rows)}")


if __name__ == "__main__":
    main()
