"""What ``--server`` was asked to do beyond HTTP limits: the features the command line turns on.

Written by :mod:`packer.runtime.cli`/:mod:`packer.runtime.main` from flags (and their
``LLAMA_ARG_*`` environment variables), read by the server's route table and dialects.
"""

from __future__ import annotations

from dataclasses import dataclass

REASONING_FORMATS = ("deepseek", "none")


@dataclass(frozen=True)
class ServerFeatures:
    # GET /metrics in Prometheus text format (llama-server's --metrics); off by default
    metrics: bool = False
    # deepseek: <think>…</think> goes to reasoning_content (OpenAI) / thinking (Ollama);
    # none: the reasoning stays inline in the answer (llama-server's --reasoning-format)
    reasoning_format: str = "deepseek"
    # -sys/--system-prompt: the system message of a chat that brings none
    system_prompt: str | None = None
