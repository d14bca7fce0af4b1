"""Sparse molecules drawn by a generator other than the twin: good versus bad, and good
versus multi-apex, for assessors side by side (issue 11).

Run: ``python benchmarks/bench_sparse_molecules.py [--weights A B ...] [--frames N]``
(default: the shipped gate file). The issue's second outside set is an independent simulator
of the twin's own sample (MgPc on Ag(100), 8 to 14 nm), on which the first assessor called
72 % of good tips bad and could not tell good tips from multi-apex ones. That set is not
here; this is the nearest stand-in the project has: the synthetic generator's ``molecules``
family (:mod:`spm_bluesky.ml.assessor.synth`, not the twin's renderer) at 8 to 14 nm and 64
or 128 px, the five classes in turn, multi-apex frames only where the ghost shows
(``SynthConfig.visible_ghosts``: a ghost that does not show cannot be judged). The seeds
(from 50,000,000) are outside every training and validation range. It is the project's own
generator, so it is no substitute for the outside set; it shows which way a change moves.

The table is :mod:`bench_family`'s.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from bench_family import run  # a sibling script (run from benchmarks/)

from spm_bluesky.ml.assessor.synth.config import SynthConfig
from spm_bluesky.ml.card import GATE

#: First seed of the frames: past every seed range training and validation draw from.
FIRST_SEED = 50_000_000
#: The outside simulator's sample: MgPc molecules, 8 to 14 nm.
CONFIG = replace(SynthConfig(visible_ghosts=True), families=("molecules",),
                 scan_size_nm_log=(8.0, 14.0), pixels=(64, 128))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", nargs="+", default=[str(GATE)],
                        help="gate files or weight files (default: the shipped gate)")
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    run(CONFIG, "sparse-molecule, 8 to 14 nm,", args.frames, FIRST_SEED, args.weights)


if __name__ == "__main__":
    main()
