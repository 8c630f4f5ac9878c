"""Distilled drafts that ship with the package, loadable by short name (``draft="<target>-distilled"``,
or ``draft="distilled"`` beside their target). Each ``<name>.pt`` is a ``whisper-spec distill``
checkpoint: only the draft's own weights (matrices int8 per row) and a record of the target it was made for.

``base-distilled.pt`` is the ``base`` preset's draft: tiny.en's first and last decoder layers reading
base's encoder outputs through a fitted adapter (linear map + per-frame MLP of width 2048), trained on
base's own text and timestamp labels of the corpus ``python -m evaluation.distill_corpus`` builds. Two
layers draft at about half the cost of four, which paid more than the four layers' better agreement.
Made by

    whisper-spec distill --target base --audio DIR/train --held-out DIR/held-out --output base-distilled.pt \
        --init-from tiny.en --layers 0,3 --with-timestamps --steps 1500 --eval-every 250 --learning-rate 3e-4 \
        --threads 2

Its held-out agreement and measured speed-ups: evaluation/results/distill-base/README.md and
evaluation/results/measurements-behind-the-defaults.md.
"""
