#!/usr/bin/env bash
# The GPU checks, run on a lent x86-64 machine with an NVIDIA GPU and no network (the device
# tool; see docs/BENCHMARKS.md): onnxruntime-gpu arrives as an xz tarball in parts (it is
# larger than one transfer), the other wheels and a copy of the real exports beside it.
#   ORT_PARTS=/tmp/ort CARRIED=.gpu/small bash bench/gpu_run.sh [STEP...]
# Installs into /tmp/site, points the loader at the CUDA/cuDNN libraries of the machine's
# nvidia-* Python packages, then runs the steps named (all of them by default), most telling
# first, so that a run cut short at its limit still returns what it measured:
#   preparation  what preparing a session buys on CUDA and TensorRT (bench/preparation.py)
#   gpu-tests    the `gpu`-marked tests
#   tests        the unit and integration tests
#   auto         what `SCORER_PROVIDERS=auto` picks, at a first start and a restart
#   scoring      CUDA against CPU through both front ends (bench/scoring.py)
# Logs go to $OUT, one file per step and provider (at most 8 come back from the device).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
PARTS=${ORT_PARTS:-/tmp/ort}
CARRIED=${CARRIED:-.gpu/small}
REQUESTS=${REQUESTS:-300}
STEPS=${*:-preparation gpu-tests tests auto scoring}
mkdir -p "$OUT" /tmp/site
cat "$PARTS"/ort.part* | xz -dc | tar -x -C /tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRIED"/*.whl \
  || exit 1
# the real exports and photos where the tests look for them (beside the checkout)
[ -e ../shared ] || ln -s "$PWD/$CARRIED/shared" ../shared
export PYTHONPATH=/tmp/site:$PWD:$PWD/modules/scorer:$PWD/modules/relay:$PWD/modules/edgelink:$PWD/scripts
nvidia_libs=$(python3 -c 'import glob, site
print(":".join(sorted(d for s in site.getsitepackages() for d in glob.glob(s + "/nvidia/*/lib"))))')
export LD_LIBRARY_PATH=$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' \
  | tee -a "$OUT/gpu.txt"
ldconfig -p | grep -c libnvinfer | sed 's/^/libnvinfer entries: /' | tee -a "$OUT/gpu.txt"

# The machine has no Azure IoT SDK (its paho-mqtt 1.x has no wheel to carry): the modules
# that import it (the relay's, the twin's) do not collect there, the others run.
pytest_here() {
  python3 -m pytest -q -p no:cacheprovider -rs --continue-on-collection-errors "$@"
}

# per_provider SCRIPT COUNT_OPTION PROVIDER...: bench/SCRIPT.py once per provider, a log each
per_provider() {
  local script=$1 count=$2
  shift 2
  for provider in "$@"; do
    echo "== bench/$script.py --provider $provider"
    python3 "bench/$script.py" "$count" "$REQUESTS" --provider "$provider" \
      --shared "$CARRIED/shared" 2>&1 | tee "$OUT/$script-$provider.log" | tail -48
  done
}

preparation() { per_provider preparation --runs cuda tensorrt; }

gpu_tests() {
  echo "== the gpu tests"
  pytest_here -m gpu tests/unit tests/integration 2>&1 | tee "$OUT/pytest-gpu.log" | tail -15
}

tests() {
  echo "== tests (unit + integration)"
  # grpcio-tools and schemathesis are dev tools the machine lacks
  pytest_here -n 8 tests/unit tests/integration \
    --deselect=tests/unit/test_openapi.py::test_it_is_valid_openapi_3_1 \
    -k "not generated_stubs_are_fresh" 2>&1 | tee "$OUT/pytest.log" | tail -25
}

auto() {
  echo "== the scorer with SCORER_PROVIDERS=auto"
  python3 scripts/make_demo_models.py /tmp/demo >/dev/null
  python3 - <<'PY' 2>&1 | tee "$OUT/auto.log"
import json, urllib.request
from pathlib import Path
from tests.scorer_process import ScorerProcess, scorer_env
for run in ("first start", "restart"):
    server = ScorerProcess(scorer_env(Path("/tmp/demo/models/colors"), Path("/tmp/cache"),
                                      PROVIDERS="auto"))
    server.wait_ready(600)
    info = json.load(urllib.request.urlopen(server.url + "/model"))
    print(run, "providers:", info["providers"], "fallbacks:", info["providerFallbacks"])
    print(server.log)
    server.stop()
PY
}

scoring() { per_provider scoring --requests cuda cpu; }

for step in $STEPS; do
  case $step in
    preparation) preparation ;;
    gpu-tests) gpu_tests ;;
    tests) tests ;;
    auto) auto ;;
    scoring) scoring ;;
    *) echo "no step $step (preparation gpu-tests tests auto scoring)" >&2; exit 2 ;;
  esac
done
