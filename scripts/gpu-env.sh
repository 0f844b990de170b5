# Sourced by the GPU scripts: names the GPU, and puts the folders holding cuBLAS and NVRTC on
# LD_LIBRARY_PATH where the loader does not know them (cudarc opens the libraries by name; on
# the lent machine they come with PyTorch's wheels).
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
fi
for lib in libcublas.so.13 libnvrtc.so.13 libcublasLt.so.13; do
    if ! ldconfig -p | grep -q "$lib"; then
        dir=$(find / -xdev -name "$lib" -not -path '/proc/*' 2>/dev/null | head -1 | xargs -r dirname)
        [ -n "$dir" ] && export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
