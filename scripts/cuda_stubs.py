"""Link-time stubs of the CUDA libraries candle links against, for building the GPU binaries on a
machine without a GPU (scripts/build-cuda.sh).

candle 0.11 builds cudarc with `dynamic-linking`, so the final link needs libcuda (the driver,
which no package outside a driver install ships), cuBLAS, cuBLASLt, cuRAND, NVRTC and (the
`nccl` feature) NCCL. A stub
exports every function cudarc declares for a library under that library's real SONAME, so the
binary records the real names (libcuda.so.1, libcublas.so.13, ...) and binds to the real
libraries at run time on a GPU machine. Called on a machine without them (LD_LIBRARY_PATH
pointing here), every stub returns its library's "not initialised / no device" status and
writes nothing, so the program reports an error instead of crashing; cuGetErrorString and
cuGetErrorName answer with a sentence that names the stub.

    python3 scripts/cuda_stubs.py CUDARC_SRC_DIR OUT_DIR

writes OUT_DIR/lib/<soname> and the unversioned link name next to it.
"""
import os
import re
import subprocess
import sys

# (module of cudarc's src/, function-name pattern, SONAME, link name, status every stub returns)
LIBRARIES = [
    ("driver", r"cu[A-Z]\w*", "libcuda.so.1", "libcuda.so", 100),  # CUDA_ERROR_NO_DEVICE
    ("cublas", r"cublas(?!Lt)[A-Z]\w*", "libcublas.so.13", "libcublas.so", 1),  # NOT_INITIALIZED
    ("cublaslt", r"cublasLt\w*", "libcublasLt.so.13", "libcublasLt.so", 1),
    ("curand", r"curand\w*", "libcurand.so.10", "libcurand.so", 201),  # NOT_INITIALIZED
    ("nvrtc", r"nvrtc\w*", "libnvrtc.so.13", "libnvrtc.so", 1),  # OUT_OF_MEMORY: nothing built
    ("nccl", r"nccl\w*", "libnccl.so.2", "libnccl.so", 2),  # ncclSystemError
]

STUB_MESSAGE = "no CUDA driver: this is the build-time stub of libcuda.so.1 (tinymim)"

# Functions that hand back a string instead of a status; stubs of them must still return one.
SPECIAL = {
    "cuGetErrorString": "int cuGetErrorString(int e, const char **s) { (void)e; *s = MSG; return 0; }",
    "cuGetErrorName": "int cuGetErrorName(int e, const char **s) { (void)e; *s = MSG; return 0; }",
    "nvrtcGetErrorString": "const char *nvrtcGetErrorString(int e) { (void)e; return MSG; }",
    "cublasGetStatusString": "const char *cublasGetStatusString(int e) { (void)e; return MSG; }",
    "cublasGetStatusName": "const char *cublasGetStatusName(int e) { (void)e; return MSG; }",
    "cublasLtGetStatusString": "const char *cublasLtGetStatusString(int e) { (void)e; return MSG; }",
    "cublasLtGetStatusName": "const char *cublasLtGetStatusName(int e) { (void)e; return MSG; }",
    "ncclGetErrorString": "const char *ncclGetErrorString(int e) { (void)e; return MSG; }",
    "ncclGetLastError": "const char *ncclGetLastError(void *c) { (void)c; return MSG; }",
}


def declared_functions(src: str, module: str, pattern: str) -> list[str]:
    """Names of the foreign functions cudarc declares in `src/<module>/sys/`."""
    names = set()
    sys_dir = os.path.join(src, module, "sys")
    for name in os.listdir(sys_dir):
        if name.endswith(".rs"):
            with open(os.path.join(sys_dir, name)) as f:
                names.update(re.findall(r"^\s+(?:pub )?fn (" + pattern + r")\(", f.read(), re.M))
    if not names:
        sys.exit(f"cuda_stubs: no functions matching {pattern} in {sys_dir}")
    return sorted(names)


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    lib_dir = os.path.join(out, "lib")
    os.makedirs(lib_dir, exist_ok=True)
    for module, pattern, soname, link_name, status in LIBRARIES:
        functions = declared_functions(src, module, pattern)
        lines = [f'#define MSG "{STUB_MESSAGE}"']
        for fn in functions:
            lines.append(SPECIAL.get(fn, f"int {fn}(void) {{ return {status}; }}"))
        c_file = os.path.join(lib_dir, soname + ".c")
        with open(c_file, "w") as f:
            f.write("\n".join(lines) + "\n")
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-w", "-O0", f"-Wl,-soname,{soname}",
             "-o", os.path.join(lib_dir, soname), c_file],
            check=True,
        )
        link = os.path.join(lib_dir, link_name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(soname, link)
        print(f"cuda_stubs: {soname}: {len(functions)} functions")


if __name__ == "__main__":
    main()
