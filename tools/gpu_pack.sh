#!/usr/bin/env bash
# gpu_pack.sh [BUILD_DIR] [OUT_DIR]: packs what a run on the GPU machine needs into OUT_DIR
# (default .device-carry, ignored by git): troupe installed into OUT_DIR/prefix (relocatable: the
# executable finds its plugins and topologies relative to itself), the GPU test binary next to it,
# and every shared library they need that a plain Ubuntu with CUDA lacks, stripped, and OUT_DIR/run
# which runs a command with the environment they need (the libraries, and NCCL's and cuDNN's from
# the machine's PyTorch: nvidia/cu13/lib, nvidia/cudnn/lib and nvidia/nccl/lib of its site-packages;
# cuDNN is loaded with dlopen, so its libraries are never packed), and OUT_DIR.tar.xz of it all
# (about 12 MB: what to carry to a machine whose transfer is limited). On the GPU machine, from the
# repository root (after `tar xJf .device-carry.tar.xz` where the archive was carried):
#   .device-carry/run gpu-test
#   .device-carry/run troupe bench train --topology topologies/gpu-1.toml --device cuda:0
#   .device-carry/run multigpu-test   (several GPUs; NCCL's peers found through the run script)
set -euo pipefail
build=${1:-build}
out=${2:-.device-carry}
rm -rf "$out"
mkdir -p "$out/prefix"
ninja -C "$build" >/dev/null  # the install and the GPU test binary, up to date
meson install -C "$build" --destdir "$PWD/$out/stage" --quiet >/dev/null
prefix_in_stage=$(find "$out/stage" -path '*/bin/troupe' -printf '%h\n' | head -1)
cp -a "$prefix_in_stage/.." "$out/prefix.tmp"
rm -rf "$out/prefix" "$out/stage"
mv "$out/prefix.tmp" "$out/prefix"
cp "$build/tests/gpu-test" "$build/tests/multigpu-test" "$build/tests/troupe-test-nccl-peer" \
  "$out/prefix/bin/"
# Libraries: everything the binaries and plugins link that is not the C/C++ runtime or CUDA's.
libdir="$out/prefix/lib"
mkdir -p "$libdir"
for binary in "$out"/prefix/bin/* $(find "$out/prefix" -name '*.so*' -type f); do
  ldd "$binary" 2>/dev/null | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libstdc++*|libgcc_s*|libpthread*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libcudnn*|libtroupe.so*) ;;
    *) cp -L "$lib" "$libdir/" ;;
  esac
done
find "$out/prefix" -type f \( -name '*.so*' -o -path '*/bin/*' \) -exec strip --strip-unneeded {} + 2>/dev/null || true
du -sh "$out"
cat >"$out/run" <<'EOF_RUN'
#!/usr/bin/env bash
# run COMMAND...: COMMAND with the packed troupe first on PATH and its libraries found.
here=$(cd "$(dirname "$0")" && pwd)
site=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)
export LD_LIBRARY_PATH=$here/prefix/lib:$here/prefix/lib/x86_64-linux-gnu:$site/nvidia/cu13/lib:$site/nvidia/cudnn/lib:$site/nvidia/nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$here/prefix/bin:$PATH TROUPE_EXE=$here/prefix/bin/troupe
export TROUPE_TEST_NCCL_PEER=$here/prefix/bin/troupe-test-nccl-peer
exec "$@"
EOF_RUN
chmod +x "$out/run"
cp tools/reference/*.py "$out/"
tar cJf "$out.tar.xz" "$out"
