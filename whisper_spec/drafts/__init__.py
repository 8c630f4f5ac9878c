"""Distilled drafts that ship with the package, loadable by short name (``draft="base-distilled"``, or
``draft="distilled"`` beside their target). Each ``<name>.pt`` is a ``whisper-spec distill`` checkpoint:
only the draft's own weights (float16) and a record of the target it was made for.

``base-distilled.pt`` (12.0 MB): for the offline ``base``; one decoder layer started from base's layer 0,
4,508 output rows (every token base emitted on the training audio, every special token, ids below 4096).
Trained for 150 steps (batch 4) on 36 windows (2,113 target tokens) of Allison prompts and hibari-tts
speech labelled by base; held-out Allison: acceptance 0.054 at k = 6 (untrained 0.007), agreement 0.24.
Too little data to be a useful draft yet: retrain on more audio with ``whisper-spec distill``.
"""
