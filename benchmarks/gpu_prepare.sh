#!/usr/bin/env bash
# Run here (not on the GPU machine), from the repository root, before the GPU session's `run` calls.
# Fills the git-ignored folder .gpu/ with what the GPU machine lacks: wheels of pydantic and its needs at
# this machine's versions (the GPU image has no pydantic; pip cannot reach a registry there) and the
# CIFAR-10 JPEG tarball and the MNIST idx files, gzipped (../shared does not travel, and a carry holds
# 64 MiB). Name .gpu in the call's `carry`.
set -euo pipefail
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu
pins=$(python3 -m pip list --format=freeze 2>/dev/null |
       grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions)==')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu $pins
cp ../shared/data/cifar10/cifar10-jpeg.tar.gz .gpu/
mkdir -p .gpu/MNIST/raw
for f in ../shared/data/MNIST/raw/*-ubyte; do gzip -c "$f" > ".gpu/MNIST/raw/$(basename "$f").gz"; done
du -sh .gpu
