"""Replay the committed v2 run's rng stream (seed 0, old rule) up to the null cells at 500 synthetic images, then run
each cell from the same generator state with the old rule (repeats) and with distinct draws."""

import copy
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import privacy_verdict as pv

found = dict(np.load(sys.argv[1]))
found["threshold"] = float(found["threshold"])
group = pv.groups(found)
args = types.SimpleNamespace(runs=200, train_share=0.5)
old_draw = pv.draw


def distinct_draw(outside, n, taken, rng):
    free = np.setdiff1d(outside, taken)
    return rng.choice(free, min(n, len(free)), replace=False)


rng = np.random.default_rng(0)
for n_h in pv.HELDOUT:
    for n_s in pv.SYNTHETIC:
        for share in pv.SHARES:
            copies = round(share * n_s)
            if n_s == 500 and share == 0:
                for name, rule in (("repeats", old_draw), ("distinct", distinct_draw)):
                    pv.draw = rule
                    r = pv.condition(
                        found, group, "random split", 1.0, n_h, n_s, copies, args, copy.deepcopy(rng)
                    )
                    print(
                        n_h, n_s, name, "true", r["true"], "false", r["false"], "null", r["null"], flush=True
                    )
                pv.draw = old_draw
            pv.condition(found, group, "random split", 1.0, n_h, n_s, copies, args, rng)
    pv.condition(found, group, "random split", 1.0, n_h, 55, 3, args, rng)
    if n_h == 200:
        break
