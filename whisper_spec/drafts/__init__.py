"""Distilled drafts that ship with the package, loadable by short name (``draft="<target>-distilled"``,
or ``draft="distilled"`` beside their target). Each ``<name>.pt`` is a ``whisper-spec distill``
checkpoint: only the draft's own weights (float16) and a record of the target it was made for.

``base-distilled.pt`` (27.4 MiB) is the ``base`` preset's draft: tiny.en's four decoder layers re-wired
to base's encoder outputs, with 11,647 output rows, trained for 1,000 steps on base's own text and
timestamp labels of 2,012 windows (173,235 tokens) of the corpus ``python -m evaluation.distill_corpus``
builds; held-out agreement 0.815, mean accepted length 2.92 at k = 6. Made by

    whisper-spec distill --target base --audio DIR/train --held-out DIR/held-out --output base-distilled.pt \
        --init-from tiny.en --with-timestamps --steps 1000 --eval-every 250 --learning-rate 3e-4 --threads 2

See evaluation/results/distill-base/README.md for what it does end to end.
"""
