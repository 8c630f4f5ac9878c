"""The web demo: speculative and plain decoding side by side, started with ``python -m demo.app``."""
