"""Repository rules for jax_flash3's Bazel build (WORKSPACE mode; Bazel 4.2 and later).

jax_flash3_dependencies() defines two repositories:

  @jax_flash3_config   What CMakeLists.txt finds at configure time, found the same way:
                       nvcc (CUDACXX, else nvcc on PATH, else /usr/local/cuda/bin/nvcc), the
                       CUTLASS/CuTe headers of the nvidia-cutlass wheel, the XLA FFI headers of the
                       installed jaxlib, asked of the Python interpreter (PYTHON_BIN_PATH, else
                       python3 on PATH). Overrides, as environment variables or --repo_env /
                       --action_env: JAX_FLASH3_CUTLASS_INCLUDE, JAX_FLASH3_FFI_INCLUDE, CUDACXX,
                       PYTHON_BIN_PATH, JAX_FLASH3_CUDA (0/OFF: pure-Python build, as with CMake).
                       It also holds the Python toolchain (that same interpreter, whose
                       site-packages provide jax and pytest to py_test).

  rules_cc, rules_java, remote_coverage_tools (Bazel 4 only)
                       Bazel 4's own @bazel_tools loads these from GitHub even for a build that
                       uses no Java. Under Bazel 4 their rules are the native ones, so local
                       shims stand in for them and the build runs offline (e.g. Debian's
                       bazel-bootstrap). Newer Bazel versions fetch the real ones as usual.
"""

_PROBE = """
import os, sys
lines = [sys.executable, "", "", ""]
try:
    import cutlass_library
    lines[1] = os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
except Exception as e:
    lines[3] += "import cutlass_library: %s; " % e
try:
    import jaxlib
    lines[2] = os.path.join(os.path.dirname(jaxlib.__file__), "include")
except Exception as e:
    lines[3] += "import jaxlib: %s; " % e
print("\\n".join(line.replace("\\n", " ") for line in lines))
"""

_OFF = ["0", "OFF", "off", "Off", "false", "FALSE", "False", "no", "NO", "No"]

def _which(rctx, name):
    p = rctx.which(name)
    return str(p) if p else ""

def _env(rctx, name):
    return rctx.os.environ.get(name, "").strip()

def _exists(rctx, path):
    return bool(path) and rctx.path(path).exists

def _starlark_str(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')

def _find_python(rctx):
    python = _env(rctx, "PYTHON_BIN_PATH") or _which(rctx, "python3") or _which(rctx, "python")
    if not python:
        fail("jax_flash3: no python3 on PATH; set PYTHON_BIN_PATH (e.g. --repo_env=PYTHON_BIN_PATH=/usr/bin/python3)")
    res = rctx.execute([python, "-c", _PROBE])
    if res.return_code != 0:
        fail("jax_flash3: %s failed to run: %s" % (python, res.stderr))
    lines = (res.stdout + "\n\n\n\n").split("\n")
    return {
        "python": lines[0].strip(),
        "cutlass": lines[1].strip(),
        "ffi": lines[2].strip(),
        "errors": [lines[3].strip()] if lines[3].strip() else [],
    }

def _find_nvcc(rctx):
    nvcc = _env(rctx, "CUDACXX")
    if not nvcc:
        nvcc = _which(rctx, "nvcc")
    if not nvcc:
        for root in [_env(rctx, "CUDA_PATH"), _env(rctx, "CUDA_HOME"), "/usr/local/cuda"]:
            if root and _exists(rctx, root + "/bin/nvcc"):
                nvcc = root + "/bin/nvcc"
                break
    if not nvcc or not _exists(rctx, nvcc):
        return ""
    # nvcc may be a wrapper script (e.g. /usr/local/bin/nvcc): ask it where it lives, as CMake does.
    res = rctx.execute([nvcc, "-dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"])
    for line in (res.stdout + "\n" + res.stderr).split("\n"):
        if line.startswith("#$ _HERE_="):
            here = line[len("#$ _HERE_="):].strip()
            if _exists(rctx, here + "/nvcc"):
                return here + "/nvcc"
    return nvcc

def _cuda_dirs(rctx, nvcc):
    """(include dir, lib dir) of the toolkit that holds nvcc, where CMake's FindCUDAToolkit looks."""
    root = nvcc.rpartition("/")[0].rpartition("/")[0]
    inc, lib = "", ""
    for d in ["targets/x86_64-linux/include", "targets/sbsa-linux/include", "include"]:
        if _exists(rctx, "%s/%s/cuda_runtime.h" % (root, d)):
            inc = "%s/%s" % (root, d)
            break
    for d in ["lib64", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib", "lib"]:
        if _exists(rctx, "%s/%s/libcudart_static.a" % (root, d)):
            lib = "%s/%s" % (root, d)
            break
    return inc, lib

def _jax_flash3_configure_impl(rctx):
    probe = _find_python(rctx)
    python = probe["python"]
    errors = list(probe["errors"])

    cuda_requested = _env(rctx, "JAX_FLASH3_CUDA") not in _OFF
    nvcc = _find_nvcc(rctx) if cuda_requested else ""
    cutlass = _env(rctx, "JAX_FLASH3_CUTLASS_INCLUDE") or probe["cutlass"]
    ffi = _env(rctx, "JAX_FLASH3_FFI_INCLUDE") or probe["ffi"]

    problems = []
    reason = ""
    if not cuda_requested:
        reason = "JAX_FLASH3_CUDA is OFF: pure-Python build (reference path only)"
    elif not nvcc:
        reason = "no CUDA compiler found (set CUDACXX or put nvcc on PATH): pure-Python build (reference path only)"
    else:
        if not _exists(rctx, cutlass + "/cute/tensor.hpp"):
            problems.append("CUTLASS headers not found (%s); pip install nvidia-cutlass or set JAX_FLASH3_CUTLASS_INCLUDE" % (cutlass or "; ".join(errors)))
        if not _exists(rctx, ffi + "/xla/ffi/api/ffi.h"):
            problems.append("XLA FFI headers not found (%s); pip install jaxlib or set JAX_FLASH3_FFI_INCLUDE" % (ffi or "; ".join(errors)))
    have_cuda = cuda_requested and bool(nvcc)

    build = [
        "# Generated by //bazel:repositories.bzl (jax_flash3_configure). Do not edit.",
        'package(default_visibility = ["//visibility:public"])',
        "",
        'load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")',
        "",
        "py_runtime(",
        '    name = "python3_runtime",',
        "    interpreter_path = %s," % _starlark_str(python),
        '    python_version = "PY3",',
        "    stub_shebang = %s," % _starlark_str("#!" + python),
        ")",
        "",
        'py_runtime_pair(name = "python_runtimes", py3_runtime = ":python3_runtime")',
        "",
        "toolchain(",
        '    name = "python_toolchain",',
        '    toolchain = ":python_runtimes",',
        '    toolchain_type = "@bazel_tools//tools/python:toolchain_type",',
        ")",
        "",
    ]
    cuda_include, cuda_lib = "", ""
    if have_cuda:
        cuda_include, cuda_lib = _cuda_dirs(rctx, nvcc)
        if not cuda_lib:
            problems.append("libcudart_static.a not found next to %s" % nvcc)
        if not problems:
            rctx.symlink(cutlass, "cutlass_include")
            rctx.symlink(ffi, "ffi_include")
            rctx.symlink(cuda_lib + "/libcudart_static.a", "cuda_lib/libcudart_static.a")
            build += [
                'filegroup(name = "cutlass_headers", srcs = glob(["cutlass_include/**"]))',
                'filegroup(name = "ffi_headers", srcs = glob(["ffi_include/**"]))',
                "",
                "# The static CUDA runtime, linked as CMake links CUDA::cudart_static.",
                "cc_library(",
                '    name = "cudart_static",',
                '    srcs = ["cuda_lib/libcudart_static.a"],',
                '    linkopts = ["-ldl", "-lrt", "-lpthread"],',
                ")",
            ]
    if problems:
        have_cuda = False
    if not have_cuda:
        build += [
            'filegroup(name = "cutlass_headers", srcs = [])',
            'filegroup(name = "ffi_headers", srcs = [])',
            'cc_library(name = "cudart_static")',
        ]
    rctx.file("BUILD.bazel", "\n".join(build) + "\n")

    rctx.file("config.bzl", "\n".join([
        "# Generated by //bazel:repositories.bzl (jax_flash3_configure). Do not edit.",
        "PYTHON = %s" % _starlark_str(python),
        "HAVE_CUDA = %s" % have_cuda,
        "NVCC = %s" % _starlark_str(nvcc if have_cuda else ""),
        "CUDA_INCLUDE = %s" % _starlark_str(cuda_include),
        "CUTLASS_INCLUDE = %s" % _starlark_str(cutlass if have_cuda else ""),
        "FFI_INCLUDE = %s" % _starlark_str(ffi if have_cuda else ""),
        "# Why the CUDA library is not built ('' when it is).",
        "NO_CUDA_REASON = %s" % _starlark_str(reason),
        "# Configuration errors: building the CUDA library fails with these.",
        "CONFIG_ERRORS = [%s]" % ", ".join([_starlark_str(p) for p in problems]),
        "",
    ]))

jax_flash3_configure = repository_rule(
    implementation = _jax_flash3_configure_impl,
    environ = [
        "PATH",
        "PYTHON_BIN_PATH",
        "CUDACXX",
        "CUDA_PATH",
        "CUDA_HOME",
        "JAX_FLASH3_CUDA",
        "JAX_FLASH3_CUTLASS_INCLUDE",
        "JAX_FLASH3_FFI_INCLUDE",
    ],
    local = True,
    doc = "Finds nvcc, the CUTLASS and XLA FFI headers and the Python interpreter (see the module docstring).",
)

# ---------------------------------------------------------------------------------------------
# Bazel 4 offline shims

_SHIMS = {
    "rules_cc": {
        "cc/BUILD": """package(default_visibility = ["//visibility:public"])
alias(name = "toolchain_type", actual = "@bazel_tools//tools/cpp:toolchain_type")
""",
        "cc/defs.bzl": "\n".join([
            "def %s(**kwargs):\n    native.%s(**kwargs)\n" % (r, r)
            for r in ["cc_binary", "cc_import", "cc_library", "cc_proto_library", "cc_test",
                      "cc_toolchain", "cc_toolchain_suite", "objc_library"]
        ]),
    },
    "rules_java": {
        "java/BUILD": 'package(default_visibility = ["//visibility:public"])\n',
        "java/defs.bzl": "\n".join([
            "def %s(**kwargs):\n    native.%s(**kwargs)\n" % (r, r)
            for r in ["java_binary", "java_import", "java_library", "java_plugin",
                      "java_proto_library", "java_runtime", "java_test", "java_toolchain"]
        ]),
    },
    "remote_coverage_tools": {
        "BUILD": """package(default_visibility = ["//visibility:public"])
# bazel coverage needs the real coverage tools; bazel build/test only need these labels to exist.
sh_binary(name = "coverage_report_generator", srcs = ["no_coverage.sh"])
sh_binary(name = "lcov_merger", srcs = ["no_coverage.sh"])
""",
        "no_coverage.sh": """#!/bin/sh
echo "jax_flash3: bazel coverage is not supported with the offline Bazel 4 shims" >&2
exit 1
""",
    },
}

def _shim_impl(rctx):
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    for path, text in _SHIMS[rctx.attr.kind].items():
        rctx.file(path, text, executable = path.endswith(".sh"))

_shim = repository_rule(implementation = _shim_impl, attrs = {"kind": attr.string()})

def _bazel_major():
    v = native.bazel_version  # "" for a build without a version stamp (e.g. Debian's bazel-bootstrap)
    if not v or not v[0].isdigit():
        return 4
    return int(v.split(".")[0])

def jax_flash3_dependencies():
    """Call from WORKSPACE: defines @jax_flash3_config (and, under Bazel 4, the offline shims)."""
    if _bazel_major() <= 4:
        for name in _SHIMS:
            if not native.existing_rule(name):
                _shim(name = name, kind = name)
    if not native.existing_rule("jax_flash3_config"):
        jax_flash3_configure(name = "jax_flash3_config")
