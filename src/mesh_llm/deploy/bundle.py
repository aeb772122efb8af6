"""Pack one .tar.gz that installs mesh-llm on a machine like this one with no network.

Layout inside the archive (one top folder, `mesh-llm-bundle/`):
  install.sh     creates a virtualenv and installs with `pip --no-index` (see install.sh)
  bundle.env     what the bundle is built for and what to install (sourced by install.sh)
  models.tsv     model files to put where `--model NAME` finds them (may be empty)
  wheels/        mesh-llm, every runtime dependency, the engine, a model package
  models/        GGUF files (a path given to --model, or a Hugging Face cache file)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..models import catalog
from ..models.resolve import resolve_model
from . import wheels
from .target import Target, this_machine

TOP = "mesh-llm-bundle"
SKIP_CONSTRAINTS = {"mesh-llm", "mesh_llm", wheels.ENGINE_DIST}
Say = Callable[[str], None]


@dataclass(frozen=True)
class ModelFile:
    """One model the bundle installs: from a package wheel, into the HF cache, or as a path."""

    role: str  # "main" or "draft"
    kind: str  # "package", "hf" or "path"
    name: str  # catalog name (package, hf) or file name (path)
    file: str  # file name inside models/ ("-" for a package)
    repo: str = "-"
    revision: str = "-"

    def tsv(self) -> str:
        return "\t".join((self.role, self.kind, self.name, self.file, self.repo, self.revision))


def default_bundle_name(target: Target, model: str | None) -> str:
    tag = f"mesh-llm-{__version__}-{target.os}-{target.arch}-py{target.python}"
    if model:
        tag += "-" + Path(model).stem if model.endswith(".gguf") else "-" + model
    return tag + ".tar.gz"


def project_root() -> Path | None:
    """The checkout this mesh_llm was imported from, if it is one (has mesh-llm's pyproject)."""
    root = Path(__file__).resolve().parents[3]
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if project.get("project", {}).get("name") == "mesh-llm" else None


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _pip(args: list[str], what: str) -> None:
    """Run pip with this interpreter; a failure is one line naming the step."""
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "-q",
                           "--disable-pip-version-check"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise UserError(f"bundle: {what} failed: {lines[-1] if lines else 'pip failed'}")


def _mesh_llm_wheel(dest: Path, work: Path, say: Say) -> Path:
    """Build mesh-llm's wheel from a copy of the checkout (or rebuild the installed one)."""
    root = project_root()
    if root is None:
        dist = wheels.installed_dist("mesh-llm")
        say(f"mesh-llm {dist.version}: rebuilt from the installed files")
        return wheels.rebuild_wheel(dist, dest)
    src = work / "src-copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(root / "src", src / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).exists():
            shutil.copy2(root / name, src / name)
    say(f"mesh-llm {__version__}: building its wheel from {root}")
    _pip(["wheel", "--no-deps", "-w", str(dest), str(src)], "building mesh-llm's wheel")
    return next(dest.glob("mesh_llm-*.whl"))


def _constraints(work: Path) -> Path:
    """Pin dependencies to the versions installed here: the bundle runs what was tested."""
    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                   if d.metadata["Name"] and d.metadata["Name"] not in SKIP_CONSTRAINTS
                   and not d.metadata["Name"].startswith("llm-")})
    path = work / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


def _engine_wheel(dest: Path, say: Say) -> str:
    """Copy the wheelhouse wheel of the engine build installed here, else rebuild it."""
    dist = wheels.installed_dist(wheels.ENGINE_DIST)
    found = wheels.find_engine_wheel(project_root())
    if found is not None:
        shutil.copy2(found, dest / found.name)
        say(f"engine: {found} (same binaries as the installed {wheels.ENGINE_DIST} "
            f"{dist.version})")
    else:
        built = wheels.rebuild_wheel(dist, dest)
        say(f"engine: no matching wheel in {', '.join(map(str, wheels.wheelhouse_dirs(None)))}"
            f"; rebuilt {built.name} from the installed files")
    return f"{wheels.ENGINE_DIST}=={dist.version}"


def _hf_revision(path: Path) -> str:
    """The snapshot folder a Hugging Face cache file sits in (`snapshots/<rev>/file`)."""
    return path.parent.name if path.parent.parent.name == "snapshots" else "bundled"


def _add_model(name: str, role: str, dest: Path, models_dir: Path,
               say: Say) -> tuple[ModelFile, str | None]:
    """Put one model into the bundle → (its manifest line, a requirement to install or None)."""
    resolved = resolve_model(name)
    entry = resolved.entry
    if entry is not None and entry.package:
        dist = wheels.installed_dist(entry.package.split("==")[0])
        built = wheels.rebuild_wheel(dist, dest)
        say(f"model {entry.name}: {built.name} (from the installed package)")
        return (ModelFile(role, "package", entry.name, "-"),
                f"{dist.metadata['Name']}=={dist.version}")
    shutil.copy2(resolved.path, models_dir / resolved.path.name)
    say(f"model {resolved.name}: {resolved.path} ({_mb(resolved.size_bytes)})")
    if entry is not None:
        return ModelFile(role, "hf", entry.name, entry.file, entry.repo,
                         _hf_revision(resolved.path)), None
    return ModelFile(role, "path", resolved.path.name, resolved.path.name), None


def _models(model: str, dest: Path, models_dir: Path,
            say: Say) -> tuple[list[ModelFile], list[str]]:
    items, reqs = [], []
    item, req = _add_model(model, "main", dest, models_dir, say)
    items.append(item)
    reqs += [req] if req else []
    entry = catalog.find(model)
    if entry is not None and entry.draft:
        try:
            item, req = _add_model(entry.draft, "draft", dest, models_dir, say)
        except UserError as err:
            say(f"draft {entry.draft}: left out ({err})")
        else:
            items.append(item)
            reqs += [req] if req else []
    return items, reqs


def _env_file(target: Target, requirements: list[str], model_packages: list[str]) -> str:
    values = {"BUNDLE_OS": target.os, "BUNDLE_ARCH": target.arch,
              "BUNDLE_PYTHON": target.python, "BUNDLE_VERSION": __version__,
              "BUNDLE_REQUIREMENTS": " ".join(requirements),
              "BUNDLE_MODEL_PACKAGES": " ".join(model_packages)}
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def build_bundle(out: Path, model: str | None = None, say: Say = print) -> Path:
    """Write the bundle to `out`; every step prints one line; the size is printed last."""
    target = this_machine()
    if model:
        resolve_model(model)  # a missing model fails before minutes of packing
    say(f"bundle for {target.describe()} -> {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mesh-llm-bundle-") as tmp:
        work = Path(tmp)
        top = work / TOP
        dest, models_dir = top / "wheels", top / "models"
        dest.mkdir(parents=True)
        models_dir.mkdir()
        own = _mesh_llm_wheel(dest, work, say)
        say("runtime dependencies: pip wheel (pinned to the versions installed here)")
        _pip(["wheel", "-w", str(dest), "-c", str(_constraints(work)), str(own)],
             "fetching the runtime dependencies")
        requirements = [f"mesh-llm=={__version__}", _engine_wheel(dest, say)]
        items: list[ModelFile] = []
        model_packages: list[str] = []  # installed --no-deps, as the catalog says
        if model:
            items, model_packages = _models(model, dest, models_dir, say)
        (top / "bundle.env").write_text(_env_file(target, requirements, model_packages))
        (top / "models.tsv").write_text("".join(i.tsv() + "\n" for i in items))
        script = top / "install.sh"
        script.write_bytes(resources.files(__package__).joinpath("install.sh").read_bytes())
        script.chmod(0o755)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
            for path in sorted(top.rglob("*")):
                rel = path.relative_to(work)
                if path.is_file():
                    say(f"  + {rel} ({_mb(path.stat().st_size)})")
                tar.add(path, arcname=str(rel), recursive=False)
        os.replace(partial, out)
    say(f"bundle: {out} ({_mb(out.stat().st_size)}); install: tar xzf {out.name} && "
        f"{TOP}/install.sh [DIR]")
    return out
