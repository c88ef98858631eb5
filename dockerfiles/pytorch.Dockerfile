# PyTorch on an nvidia/cuda image: one template for the `base`, `runtime` and `devel`
# flavors (CUDA_FLAVOR says which; the differences are in the checks, not the steps).
# `cudaimg build` fills in every ARG after checking the combination; plain `docker build`
# works too (dockerfiles/README.md). The build context is the wheelhouse: a directory of
# wheels for PIP_NO_INDEX=1 (air-gapped), or an empty directory.
#
# Three stages, so that no wheel file ever lands in a layer of the result:
#   python  the base, plus Python from the OS packages when the base lacks PYTHON
#   venv    torch (and EXTRA_PACKAGES) pip-installed into /opt/venv (PEP 668: the
#           system Python is never touched), then checked: torch imports and was built
#           for TORCH_CUDA
#   final   the `python` stage plus /opt/venv, NVIDIA_REQUIRE_CUDA and the OCI labels
#
# No `# syntax=` line: that would make BuildKit fetch a frontend image from a registry.
#
# Credentials never go into an ARG (the image's history records every arg a RUN uses):
# the RUNs that reach the apt mirror and the pip index mount them as BuildKit secrets,
# present only while that RUN runs and absent from every layer:
#   cudaimg_apt_auth       an apt_auth.conf(5) entry for APT_MIRROR
#                          (`machine http://host/path login USER password PASSWORD`)
#   cudaimg_pip_index_url  the index URL with its credentials, read into pip's PIP_INDEX_URL
# Each is optional; without it the RUN uses APT_MIRROR and PIP_INDEX_URL as they are.
# `docker build --secret id=cudaimg_pip_index_url,src=FILE …` provides one. The classic
# builder cannot mount secrets: `cudaimg build --builder classic` drops these `--mount`
# options and refuses credentials.

# The base, pinned by digest: docker.io/nvidia/cuda:TAG@sha256:…
ARG BASE_IMAGE=docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04

FROM ${BASE_IMAGE} AS python
# Python minor version, e.g. 3.11.
ARG PYTHON=3.10
# Replaces the distribution's archive URL (archive/security.ubuntu.com, deb.debian.org)
# in apt's sources, e.g. http://mirror.corp.example/ubuntu. Empty: leave them. It is data,
# never code: perl reads it from the environment, and an interpolated value is not parsed
# again (sed's replacement would run `&`, `\1` and, after a `#`, its own commands).
ARG APT_MIRROR=
RUN --mount=type=secret,id=cudaimg_apt_auth,required=false \
    set -eu; \
    if command -v "python${PYTHON}" >/dev/null 2>&1 \
        && "python${PYTHON}" -c 'import venv, ensurepip' >/dev/null 2>&1; then \
        echo "python${PYTHON}: from the base image"; \
    elif command -v apt-get >/dev/null 2>&1; then \
        if [ -n "${APT_MIRROR}" ]; then \
            for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do \
                if [ -f "$f" ]; then \
                    APT_MIRROR="${APT_MIRROR}" perl -pi -e 's#https?://(?:archive|security)\.ubuntu\.com/ubuntu/?#$ENV{APT_MIRROR}#g; s#https?://deb\.debian\.org/debian/?#$ENV{APT_MIRROR}#g' "$f"; \
                fi; \
            done; \
        fi; \
        auth=; \
        if [ -f /run/secrets/cudaimg_apt_auth ]; then auth=/run/secrets/cudaimg_apt_auth; fi; \
        apt-get ${auth:+-o "Dir::Etc::netrc=$auth"} update; \
        DEBIAN_FRONTEND=noninteractive apt-get ${auth:+-o "Dir::Etc::netrc=$auth"} install -y --no-install-recommends \
            "python${PYTHON}" "python${PYTHON}-venv" ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
        echo "python${PYTHON}: from the OS packages"; \
    elif command -v dnf >/dev/null 2>&1; then \
        dnf install -y "python${PYTHON}"; \
        dnf clean all; \
        echo "python${PYTHON}: from the OS packages"; \
    else \
        echo "no python${PYTHON} in the base and no apt-get or dnf to install it" >&2; \
        exit 1; \
    fi

FROM python AS venv
ARG PYTHON=3.10
# torch version (2.5.1) and its wheel variant (cu124: CUDA 12.4), and that CUDA (12.4).
ARG TORCH=2.5.1
ARG TORCH_VARIANT=cu124
ARG TORCH_CUDA=12.4
# What pip is asked for: `2.14.0+cu130` when the index names its variants (so an index
# holding several picks this one), else empty: TORCH alone.
ARG TORCH_PIN=
ARG CUDA_FLAVOR=base
# More pip packages, space-separated ("numpy pillow").
ARG EXTRA_PACKAGES=
# Where pip finds torch: PyTorch's index of the variant, or the team's own.
ARG PIP_INDEX_URL=https://download.pytorch.org/whl/cu124
# 1: install from the wheelhouse (the build context) only, no index at all.
ARG PIP_NO_INDEX=0
COPY . /tmp/wheelhouse/
# pip reads the index from PIP_INDEX_URL in its environment, never from its command line
# (which any user's `ps` shows while it runs); `set -f`: EXTRA_PACKAGES is split into
# words, never expanded as file names.
RUN --mount=type=secret,id=cudaimg_pip_index_url,required=false \
    set -euf; \
    "python${PYTHON}" -m venv /opt/venv; \
    if [ "${PIP_NO_INDEX}" = 1 ]; then \
        unset PIP_INDEX_URL; \
        set -- --no-index --find-links /tmp/wheelhouse; \
    else \
        if [ -f /run/secrets/cudaimg_pip_index_url ]; then \
            PIP_INDEX_URL=$(cat /run/secrets/cudaimg_pip_index_url); \
        fi; \
        export PIP_INDEX_URL; \
        set --; \
    fi; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check "$@" \
        "torch==${TORCH_PIN:-$TORCH}" ${EXTRA_PACKAGES}; \
    /opt/venv/bin/python -c 'import sys, torch; print("torch", torch.__version__, "CUDA", torch.version.cuda); sys.exit(0 if torch.version.cuda == sys.argv[1] else "torch is built for CUDA %s, not %s" % (torch.version.cuda, sys.argv[1]))' "${TORCH_CUDA}"; \
    if [ "${CUDA_FLAVOR}" = devel ] && command -v nvcc >/dev/null 2>&1; then \
        nvcc_cuda=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p'); \
        if [ "${nvcc_cuda}" != "${TORCH_CUDA%%.*}" ]; then \
            echo "nvcc is CUDA ${nvcc_cuda}, the wheels CUDA ${TORCH_CUDA}: extensions would not build" >&2; \
            exit 1; \
        fi; \
    fi

FROM python
ARG PYTHON=3.10
ARG TORCH=2.5.1
ARG TORCH_VARIANT=cu124
ARG TORCH_CUDA=12.4
ARG CUDA_FLAVOR=base
# The base's own CUDA (its CUDA_VERSION), its name and digest, for the labels.
ARG BASE_CUDA=
ARG BASE_NAME=docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04
ARG BASE_DIGEST=
# What the container runtime checks against the host driver: the wheels' CUDA.
ARG NVIDIA_REQUIRE_CUDA=cuda>=12.4
COPY --from=venv /opt/venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CUDA_HOME=/usr/local/cuda \
    NVIDIA_REQUIRE_CUDA=${NVIDIA_REQUIRE_CUDA}
LABEL org.opencontainers.image.base.name="${BASE_NAME}" \
      org.opencontainers.image.base.digest="${BASE_DIGEST}" \
      io.cudaimg.torch.version="${TORCH}" \
      io.cudaimg.torch.variant="${TORCH_VARIANT}" \
      io.cudaimg.cuda.wheels="${TORCH_CUDA}" \
      io.cudaimg.cuda.base="${BASE_CUDA}" \
      io.cudaimg.cuda.flavor="${CUDA_FLAVOR}" \
      io.cudaimg.python.version="${PYTHON}"
