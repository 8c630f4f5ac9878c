"""Distilled drafts that ship with the package, loadable by short name (``draft="<target>-distilled"``,
or ``draft="distilled"`` beside their target). Each ``<name>.pt`` is a ``whisper-spec distill``
checkpoint: only the draft's own weights (float16) and a record of the target it was made for.

None ships yet. The first one trained here for ``base`` (one layer, 4,508 output rows, 12 MB, trained on
2,113 target tokens) reached only 0.054 held-out acceptance and made ``base`` slower, so it was not
committed; see issue 8's note for what a useful one needs.
"""
