#!/usr/bin/env bash
# The virtual environment for FedML 0.9.6's MPI FedNAS (bench/peers/, issue 17 item 5).
#
#   bash bench/peers/setup.sh [VENV]      (default: $PEERS_VENV or /work/peers-venv)
#
# Idempotent: an existing venv is reused, each step is skipped when its check already
# passes, and it prints what it did. What it installs and why:
#   - torch 2.14.1 / torchvision 0.29.1, the same releases as ours (from the local wheels
#     where the machine has them), pinned by a constraints file for every later step, so
#     nothing FedML asks for can replace them;
#   - fedml==0.9.6 with --no-deps: its full dependency list (wandb, onnx, gensim,
#     tritonclient, deepspeed extras, ...) is far larger than what its FedNAS MPI path
#     imports, and pins numpy<2, networkx<3 and others that would fight torch;
#   - only the packages that `import fedml` and fedml.simulation.mpi.fednas import
#     (found by importing until nothing was missing), with numpy<2 (FedML's pin);
#   - setuptools<81: FedML imports pkg_resources, which setuptools 81 dropped, and
#     torch 2.14.1 needs setuptools>=77.0.3, so 77-80 is the range that satisfies both;
#   - mpi4py and MPICH from PyPI, as in our own venv.
set -euo pipefail

VENV=${1:-${PEERS_VENV:-/work/peers-venv}}
PY=${PYTHON:-python3}
CONSTRAINTS="$VENV/peers-constraints.txt"

say() { printf 'setup.sh: %s\n' "$*"; }

if [ -x "$VENV/bin/python" ]; then
    say "venv $VENV exists ($("$VENV/bin/python" --version 2>&1)); reusing it"
else
    say "creating venv $VENV with $($PY --version 2>&1)"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

cat >"$CONSTRAINTS" <<'EOF'
torch==2.14.1
torchvision==0.29.1
numpy<2
setuptools>=77.0.3,<81
protobuf<4
paho-mqtt<2
wandb==0.13.2
EOF

have() { "$VENV/bin/python" - "$@" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    if want and version(name) != want:
        sys.exit(1)
    version(name)
EOF
}

# The packages FedML 0.9.6's package init and its FedNAS MPI path import (beyond torch).
DEPS=(
    "numpy<2" "setuptools>=77.0.3,<81" mpi4py mpich pyyaml h5py
    multiprocess python-dotenv docker requests GPUtil scipy chardet psutil cachetools
    "paho-mqtt<2" "wandb==0.13.2" click pydantic python-dateutil redis sqlalchemy httpx
    fastapi pandas boto3 dill tqdm wget prettytable
)

if have torch==2.14.1 torchvision==0.29.1; then
    say "torch 2.14.1 and torchvision 0.29.1 already installed"
else
    say "installing torch 2.14.1, torchvision 0.29.1"
    "${PIP[@]}" install -q -c "$CONSTRAINTS" torch==2.14.1 torchvision==0.29.1
fi

if have fedml==0.9.6; then
    say "fedml 0.9.6 already installed"
else
    say "installing fedml 0.9.6 (--no-deps)"
    "${PIP[@]}" install -q --no-deps fedml==0.9.6
fi

check_import() {
    "$VENV/bin/python" -W ignore -c \
        "import fedml, pkg_resources; from fedml.simulation.mpi.fednas.FedNASAPI import FedML_FedNAS_distributed" \
        >/dev/null 2>&1
}
if check_import && have mpi4py mpich pyyaml h5py; then
    say "FedML's FedNAS MPI path already imports; dependencies in place"
else
    say "installing FedML's FedNAS dependencies: ${DEPS[*]}"
    "${PIP[@]}" install -q -c "$CONSTRAINTS" "${DEPS[@]}"
fi

if ! check_import; then
    say "ERROR: fedml.simulation.mpi.fednas still does not import:"
    "$VENV/bin/python" -c "import fedml; from fedml.simulation.mpi.fednas.FedNASAPI import FedML_FedNAS_distributed" 2>&1 | tail -3
    exit 1
fi
"$VENV/bin/python" -W ignore - <<'EOF'
from importlib.metadata import version
names = ["fedml", "torch", "torchvision", "numpy", "setuptools", "mpi4py", "mpich", "wandb"]
print("setup.sh: ready:", ", ".join(f"{n} {version(n)}" for n in names))
EOF
say "mpirun: $VENV/bin/mpirun"
