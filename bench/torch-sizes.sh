#!/bin/sh
# Measures what pip's CUDA build of torch adds to an image: installs torch from PyPI into a
# fresh virtual environment (as the dockerfiles/ templates do, PEP 668) and reports its
# size on disk, split into the `nvidia-*` CUDA wheels and the rest. `du --apparent-size -sb`
# counts file bytes, which is what an uncompressed image layer of the venv holds.
#
#   bench/torch-sizes.sh [TORCH_VERSION] [WORK_DIR]
#
# Needs python3 with venv, PyPI access and ~6 GB free in WORK_DIR (default /tmp). The venv is
# removed afterwards. It prints one `name bytes` line per figure.
set -eu
torch="${1:-2.5.1}"
work="${2:-/tmp}/cudaimg-torch-sizes.$$"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
python3 -m venv "$work/venv"
started=$(date +%s)
"$work/venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "torch==$torch"
ended=$(date +%s)
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "python $("$work/venv/bin/python" -c 'import platform; print(platform.python_version())')"
echo "torch $("$work/venv/bin/python" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
echo "install_seconds $((ended - started))"
echo "venv_bytes $(du --apparent-size -sb "$work/venv" | cut -f1)"
echo "nvidia_wheels_bytes $(du --apparent-size -sb "$site/nvidia" | cut -f1)"
echo "torch_package_bytes $(du --apparent-size -sb "$site/torch" | cut -f1)"
echo "triton_bytes $(du --apparent-size -sb "$site/triton" 2>/dev/null | cut -f1 || echo 0)"
"$work/venv/bin/pip" list --disable-pip-version-check 2>/dev/null | grep -i '^nvidia-' | awk '{print "wheel " $1 " " $2}'
