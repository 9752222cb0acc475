"""The null cells at 500 synthetic images: the old draw (repeats), the same draw at the capped size, and distinct draws
(capped at the pool outside the training and held-out sets). python diag.py CACHE.npz RUNS"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import privacy_verdict as pv

from medisyn_cli.evaluate.memorisation import memorisation_tests, near_copy_groups

found = dict(np.load(sys.argv[1]))
found["threshold"] = float(found["threshold"])
group = pv.groups(found)
t = found["threshold"]
RUNS = int(sys.argv[2])


def run(n_h, n_s, rule, rng):
    train = np.flatnonzero(pv.split(group, 1.0, 0.5, rng))
    outside = np.setdiff1d(np.arange(len(group)), train)
    heldout = pv.draw(outside, n_h, np.array([], int), rng)
    free = np.setdiff1d(outside, heldout)
    if rule == "repeats":
        synthetic = pv.draw(outside, n_s, heldout, rng)
    elif rule == "repeats@cap":  # the old rule's with-replacement draw, at the distinct draw's size
        synthetic = rng.choice(outside, min(n_s, len(free)))
    else:
        synthetic = rng.choice(free, min(n_s, len(free)), replace=False)
    own = rng.choice(train, min(pv.TRAIN_SELF, len(train)), replace=False)
    own_nearest, own_ids = pv.nearest(found, own, train, own=True)
    syn = pv.nearest(found, synthetic, train)[0]
    res = memorisation_tests(
        syn,
        pv.nearest(found, heldout, train)[0],
        t,
        train_self=own_nearest,
        train_self_groups=near_copy_groups(own, own_ids, own_nearest, t),
    )
    return (
        res["memorises"],
        int((syn >= t).sum()),
        int((own_nearest >= t).sum()),
        len(synthetic),
        len(free),
        len(np.unique(synthetic)),
        res["flagged_by"],
    )


for n_h in (50, 200):
    for rule in ("repeats", "repeats@cap", "distinct"):
        clock = time.time()
        rows = [run(n_h, 500, rule, np.random.default_rng([7, n_h, i])) for i in range(RUNS)]
        true = np.mean([r[0] is True for r in rows])
        syn = np.array([r[1] for r in rows])
        own = np.array([r[2] for r in rows])
        size = np.array([r[3] for r in rows])
        free = np.array([r[4] for r in rows])
        uniq = np.array([r[5] for r in rows])
        rate = syn / size
        print(
            f"n_h {n_h} {rule:>8}: true {true:.3f} (SE {np.sqrt(true * (1 - true) / RUNS):.3f}) n_s mean {size.mean():.1f} [{size.min()}-{size.max()}] "
            f"distinct {uniq.mean():.1f} free {free.mean():.1f}; syn near mean {syn.mean():.2f} var {syn.var():.2f} "
            f"(binomial var {np.mean(size * rate.mean() * (1 - rate.mean())):.2f}) rate {rate.mean():.4f}; self near mean {own.mean():.2f}; "
            f"corr(syn, self) {np.corrcoef(syn, own)[0, 1]:.3f}; {time.time() - clock:.0f}s",
            flush=True,
        )
