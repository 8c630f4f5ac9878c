"""Distilled drafts that ship with the package, loadable by short name (``draft="<target>-distilled"``,
or ``draft="distilled"`` beside their target). Each ``<name>.pt`` is a ``whisper-spec distill``
checkpoint: only the draft's own weights (matrices int8 per row) and a record of the target it was made for.

``base-distilled.pt`` (11.1 MiB) is the ``base`` preset's draft: tiny.en's first and last decoder
layers reading base's encoder outputs through a fitted adapter (linear map + per-frame MLP of width
2048), with 11,647 output rows, trained for 1,500 steps on base's own text and timestamp labels of
2,012 windows (173,235 tokens) of the corpus ``python -m evaluation.distill_corpus`` builds; held-out
agreement 0.799, mean accepted length 2.66 at k = 6. Two layers draft at about half the cost of four
(2.1 against 3.5-4 ms a step on a 2-core CPU), which paid more than the four layers' better agreement
(0.845). Made by

    whisper-spec distill --target base --audio DIR/train --held-out DIR/held-out --output base-distilled.pt \
        --init-from tiny.en --layers 0,3 --with-timestamps --steps 1500 --eval-every 250 --learning-rate 3e-4 \
        --threads 2

With ``transcribe()``'s defaults it makes base 1.30-1.32x faster on 7 held-out real recordings of
28 s or more on a 2-core CPU, token-identical (see evaluation/results/distill-base/README.md).
"""
