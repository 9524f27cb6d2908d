"""What a benchmark's `--provider` means: the scorer's `SCORER_PROVIDERS` setting for it, and
the provider names a bare session gets from that same setting."""

from __future__ import annotations

from scorer.settings import Settings

SETTINGS = {"cpu": "cpu", "cuda": "cuda,cpu", "tensorrt": "tensorrt,cuda,cpu"}


def provider_names(choice: str) -> list[str]:
    """ONNX Runtime's names, in order, for the `--provider` choice."""
    return list(Settings.from_env({"SCORER_PROVIDERS": SETTINGS[choice]}).providers)
