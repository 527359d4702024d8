"""//:cpu_tests: run pytest on the given test files, against the Bazel-built package.

The library that //:jax_flash3 carries (runfiles jax_flash3/libjax_flash3_cuda.so) is loaded
first, to check that it links and exports the FFI handlers, and handed to the package through
JAX_FLASH3_LIBRARY (the package's own lookup resolves symlinks back to the source tree).
"""

import ctypes
import os
import pathlib
import sys

sys.dont_write_bytecode = True  # runfiles are symlinks into the source tree

SYMBOLS = (
    "jax_flash3_fwd",
    "jax_flash3_bwd",
    "jax_flash3_fwd_workspace_bytes",
    "jax_flash3_bwd_workspace_bytes",
)


def workspace_root() -> pathlib.Path:
    srcdir = os.environ.get("TEST_SRCDIR") or os.environ.get("RUNFILES_DIR")
    if srcdir:
        return pathlib.Path(srcdir) / os.environ.get("TEST_WORKSPACE", "jax_flash3")
    return pathlib.Path.cwd()


def main() -> int:
    root = workspace_root()
    lib = root / "jax_flash3" / "libjax_flash3_cuda.so"
    if lib.is_file():
        handle = ctypes.CDLL(str(lib))  # RTLD_NOW: fails on any unresolved symbol
        missing = [s for s in SYMBOLS if not hasattr(handle, s)]
        if missing:
            print(f"cpu_tests: {lib} does not export {missing}", file=sys.stderr)
            return 1
        os.environ["JAX_FLASH3_LIBRARY"] = str(lib.resolve())
        print(f"cpu_tests: loaded {lib.resolve()} (exports {', '.join(SYMBOLS)})")
    else:
        print("cpu_tests: no CUDA library in this build (pure-Python package)")

    import pytest

    args = [str(root / a) if (root / a).exists() else a for a in sys.argv[1:]]
    return pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(root), *args])


if __name__ == "__main__":
    sys.exit(main())
