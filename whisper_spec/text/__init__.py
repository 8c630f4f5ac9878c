"""Text LLMs on the draft/verify core: GGUF/transformers loading (``checkpoints``), an incremental
llama/qwen2 forward over a position-addressed cache (``model``), the text drafts (``drafts``) and the
target-plus-draft engine (``engine``). The public entry point is ``whisper_spec.generation.generate``."""
