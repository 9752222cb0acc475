"""Suspect (b): the null cell with the self-reference from the run's own split vs from an independent split."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import privacy_verdict as pv

from medisyn_cli.evaluate.memorisation import memorisation_tests, near_copy_groups

found = dict(np.load(sys.argv[1]))
found["threshold"] = float(found["threshold"])
t = found["threshold"]
group = pv.groups(found)
RUNS = int(sys.argv[2])


def run(n_h, n_s, repeats, independent, rng):
    train = np.flatnonzero(pv.split(group, 1.0, 0.5, rng))
    outside = np.setdiff1d(np.arange(len(group)), train)
    heldout = pv.draw(outside, n_h, np.array([], int), rng)
    free = np.setdiff1d(outside, heldout)
    synthetic = (
        pv.draw(outside, n_s, heldout, rng)
        if repeats
        else rng.choice(free, min(n_s, len(free)), replace=False)
    )
    other = np.flatnonzero(pv.split(group, 1.0, 0.5, rng))  # drawn always, so both arms share the stream
    ref_train = other if independent else train
    own = rng.choice(ref_train, min(pv.TRAIN_SELF, len(ref_train)), replace=False)
    own_nearest, own_ids = pv.nearest(found, own, ref_train, own=True)
    syn = pv.nearest(found, synthetic, train)[0]
    res = memorisation_tests(
        syn,
        pv.nearest(found, heldout, train)[0],
        t,
        train_self=own_nearest,
        train_self_groups=near_copy_groups(own, own_ids, own_nearest, t),
    )
    return res["memorises"] is True, int((syn >= t).sum()), int((own_nearest >= t).sum())


for n_h in (50, 200):
    for repeats in (True, False):
        for independent in (False, True):
            rows = np.array(
                [run(n_h, 500, repeats, independent, np.random.default_rng([7, n_h, i])) for i in range(RUNS)]
            )
            p = rows[:, 0].mean()
            print(
                f"n_h {n_h} {'repeats' if repeats else 'distinct'} self-ref {'independent split' if independent else 'own split'}: "
                f"true {p:.3f} (SE {np.sqrt(p * (1 - p) / RUNS):.3f}); corr(syn, self) {np.corrcoef(rows[:, 1], rows[:, 2])[0, 1]:.3f}",
                flush=True,
            )
