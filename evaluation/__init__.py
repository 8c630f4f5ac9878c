"""Evaluation of whisper_spec: manifests of real and synthetic speech, Whisper's text normaliser, WER and CER.

Benchmarks that print tables live beside this package as programs; this package holds what they share.
"""
