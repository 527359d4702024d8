"""Rules behind //:jax_flash3_cuda: CMakeLists.txt's target jax_flash3_cuda, in Bazel.

The flags, definitions and selection rules below are CMakeLists.txt's; keep the two in step
(tests/test_bazel.py checks the defaults and the flags against CMakeLists.txt).

Pruning, as CMake's cache options (lists take ';' or ','):
  --define=jax_flash3_head_dims=128      JAX_FLASH3_HEAD_DIMS   (default 64;96;128;192;256)
  --define=jax_flash3_dtypes=bf16        JAX_FLASH3_DTYPES      (default bf16;fp16)
  --define=jax_flash3_bwd_head_dims=...  JAX_FLASH3_BWD_HEAD_DIMS (default 64;128;256)
  --define=jax_flash3_bwd_dtypes=...     JAX_FLASH3_BWD_DTYPES  (default bf16)
  --define=jax_flash3_fp8_head_dims=...  JAX_FLASH3_FP8_HEAD_DIMS (default 64;128;256; "" = none)
  --define=jax_flash3_backward=OFF       JAX_FLASH3_BACKWARD    (default ON)
  --define=jax_flash3_hopper=OFF         JAX_FLASH3_HOPPER      (default ON)
  --define=jax_flash3_cuda=OFF           JAX_FLASH3_CUDA        (default ON; the environment
                                         variable JAX_FLASH3_CUDA=0 works too, as with CMake)
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")
load(
    "@jax_flash3_config//:config.bzl",
    "CONFIG_ERRORS",
    "CUDA_INCLUDE",
    "HAVE_CUDA",
    "NO_CUDA_REASON",
    "NVCC",
    "PYTHON",
)

# CMakeLists.txt: set(JAX_FLASH3_HEAD_DIMS ...) and set(JAX_FLASH3_DTYPES ...)
DEFAULT_HEAD_DIMS = ["64", "96", "128", "192", "256"]
DEFAULT_DTYPES = ["bf16", "fp16"]
DEFAULT_BWD_HEAD_DIMS = ["64", "128", "256"]
DEFAULT_BWD_DTYPES = ["bf16"]
DEFAULT_FP8_HEAD_DIMS = ["64", "128", "256"]

# CMakeLists.txt: target_compile_definitions (the per-target part; instantiation defines are added
# from the selection) and target_compile_options, plus what CMake itself adds for a Release build
# of a SHARED library with hidden visibility and C++17.
COMMON_DEFINES = ["NDEBUG", "CUTLASS_DEBUG_TRACE_LEVEL=0", "CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED"]
NVCC_FLAGS = [
    "-gencode=arch=compute_90a,code=sm_90a",
    "-O3",
    "--use_fast_math",
    "--expt-relaxed-constexpr",
    "-lineinfo",
    "--resource-usage",
    "-Xptxas=-warn-spills",
    "-std=c++17",
    "-Xcompiler=-fPIC",
    "-Xcompiler=-fvisibility=hidden",
]
CXX_FLAGS = ["-O2", "-std=c++17", "-fPIC", "-fvisibility=hidden"]

_OFF = ["0", "OFF", "off", "Off", "false", "FALSE", "False", "no", "NO", "No"]

JaxFlash3ObjectInfo = provider(
    doc = "One object file of libjax_flash3_cuda.so and the CMake selection group it belongs to.",
    fields = {
        "object": "File: the compiled object",
        "group": "'core' (always built), 'hopper' (csrc/kernels/hopper/*.cu) or 'instantiation'",
        "instantiation": "for group 'instantiation': the file's stem, e.g. fwd_sm90_bf16_hdim128",
    },
)

def parse_instantiation(stem):
    """'fwd_sm90_bf16_hdim128' -> struct(direction, dtype, head_dim); None for any other name."""
    parts = stem.split("_")
    if len(parts) != 4 or parts[0] not in ("fwd", "bwd") or parts[1] != "sm90":
        return None
    if not parts[3].startswith("hdim") or not parts[3][4:].isdigit():
        return None
    return struct(direction = parts[0], dtype = parts[2], head_dim = parts[3][4:])

def _list(ctx, name, default):
    v = ctx.var.get(name)
    if v == None:
        return default
    return [x.strip() for x in v.replace(",", ";").split(";") if x.strip()]

def _on(ctx, name):
    v = ctx.var.get(name)
    return v == None or v.strip() not in _OFF

def selection(ctx, instantiations):
    """CMakeLists.txt's selection loop, over the instantiation files that exist."""
    hopper = _on(ctx, "jax_flash3_hopper")
    dirs = ["fwd"] + (["bwd"] if _on(ctx, "jax_flash3_backward") else [])
    selected = []
    if hopper:
        for d in dirs:
            if d == "fwd":
                dtypes = _list(ctx, "jax_flash3_dtypes", DEFAULT_DTYPES)
                head_dims = _list(ctx, "jax_flash3_head_dims", DEFAULT_HEAD_DIMS)
            else:
                dtypes = _list(ctx, "jax_flash3_bwd_dtypes", DEFAULT_BWD_DTYPES)
                head_dims = _list(ctx, "jax_flash3_bwd_head_dims", DEFAULT_BWD_HEAD_DIMS)
            for dt in dtypes:
                for hd in head_dims:
                    stem = "%s_sm90_%s_hdim%s" % (d, dt, hd)
                    if stem in instantiations and stem not in selected:
                        selected.append(stem)
        # CMakeLists.txt: foreach(_hd IN LISTS JAX_FLASH3_FP8_HEAD_DIMS) (forward only).
        for hd in _list(ctx, "jax_flash3_fp8_head_dims", DEFAULT_FP8_HEAD_DIMS):
            stem = "fwd_sm90_fp8_hdim%s" % hd
            if stem in instantiations and stem not in selected:
                selected.append(stem)
    defines = ["JAX_FLASH3_HAS_" + s.upper() for s in selected]
    if hopper:
        defines.append("JAX_FLASH3_HOPPER=1")
    return struct(
        cuda = _on(ctx, "jax_flash3_cuda") and HAVE_CUDA,
        cuda_requested = _on(ctx, "jax_flash3_cuda"),
        hopper = hopper,
        selected = selected,
        defines = defines + COMMON_DEFINES,
    )

def _no_cuda_reason(ctx):
    if not _on(ctx, "jax_flash3_cuda"):
        return "--define=jax_flash3_cuda=%s: the CUDA library is not built" % ctx.var["jax_flash3_cuda"]
    if CONFIG_ERRORS:
        return "; ".join(CONFIG_ERRORS)
    return NO_CUDA_REASON

def _fail_action(ctx, out, reason):
    ctx.actions.run_shell(
        outputs = [out],
        command = "echo 'jax_flash3: cannot build %s: '\"$1\" >&2; exit 1" % out.short_path,
        arguments = [reason],
        mnemonic = "JaxFlash3NoCuda",
    )

def _object_impl(ctx):
    src = ctx.file.src
    rel = src.short_path
    if rel.startswith("../"):  # this workspace used as an external repository
        rel = rel.split("/", 2)[2]
    if rel.startswith("csrc/"):
        rel = rel[len("csrc/"):]
    sel = selection(ctx, ctx.attr.instantiations)
    if not sel.cuda:
        # Building it anyway fails, saying why (in a path of its own: the real object stays).
        out = ctx.actions.declare_file("_objs/jax_flash3_cuda_off/%s.o" % rel.rpartition(".")[0])
        _fail_action(ctx, out, _no_cuda_reason(ctx))
        info = JaxFlash3ObjectInfo(object = out, group = ctx.attr.group, instantiation = ctx.attr.instantiation)
        return [DefaultInfo(files = depset([out])), info]
    out = ctx.actions.declare_file("_objs/jax_flash3_cuda/%s.o" % rel.rpartition(".")[0])
    info = JaxFlash3ObjectInfo(object = out, group = ctx.attr.group, instantiation = ctx.attr.instantiation)

    root = ctx.label.workspace_root
    csrc = (root + "/csrc") if root else "csrc"
    config_root = ctx.attr._cutlass.label.workspace_root
    includes = ["-I" + csrc]
    includes += ["-isystem", config_root + "/cutlass_include", "-isystem", config_root + "/ffi_include"]
    cc_toolchain = find_cpp_toolchain(ctx)
    host_cc = cc_toolchain.compiler_executable
    if src.extension == "cu":
        executable = NVCC
        flags = ["-ccbin", host_cc] + NVCC_FLAGS
        mnemonic = "JaxFlash3Nvcc"
    else:
        executable = host_cc
        flags = CXX_FLAGS + ["-isystem", CUDA_INCLUDE]
        mnemonic = "JaxFlash3Cxx"
    # Every object may read any header of csrc/, CUTLASS or the FFI; bazel/compile.py reports the
    # ones it did not read (unused_inputs_list), so header edits rebuild only what includes them.
    headers = depset(ctx.files.hdrs + ctx.files._cutlass + ctx.files._ffi)
    headers_list = ctx.actions.declare_file(out.basename[:-2] + ".headers", sibling = out)
    header_args = ctx.actions.args()
    header_args.set_param_file_format("multiline")
    header_args.add_all(headers)
    ctx.actions.write(headers_list, header_args)
    unused = ctx.actions.declare_file(out.basename[:-2] + ".unused", sibling = out)
    depfile = ctx.actions.declare_file(out.basename[:-2] + ".d", sibling = out)

    args = ctx.actions.args()
    args.add_all([ctx.file._compile, headers_list, unused, depfile, "--", executable])
    args.add_all(flags)
    args.add_all(["-D" + d for d in sel.defines])
    args.add_all(includes)
    args.add_all(["-c", src.path, "-o", out.path])
    ctx.actions.run(
        executable = PYTHON,
        arguments = [args],
        inputs = depset(
            [src, headers_list, ctx.file._compile],
            transitive = [headers, cc_toolchain.all_files],
        ),
        outputs = [out, unused, depfile],
        unused_inputs_list = unused,
        mnemonic = mnemonic,
        progress_message = "Compiling %s (jax_flash3_cuda)" % src.short_path,
        use_default_shell_env = True,
    )
    return [DefaultInfo(files = depset([out])), info]

jax_flash3_object = rule(
    implementation = _object_impl,
    doc = "Compiles one source of jax_flash3_cuda (nvcc for .cu, the C++ toolchain's compiler for .cc) with CMake's flags and the selection's definitions.",
    attrs = {
        "src": attr.label(allow_single_file = [".cu", ".cc", ".cpp"], mandatory = True),
        "hdrs": attr.label_list(allow_files = True),
        "group": attr.string(values = ["core", "hopper", "instantiation"], mandatory = True),
        "instantiation": attr.string(),
        "instantiations": attr.string_list(doc = "every instantiation file's stem (for the definitions)"),
        "_cutlass": attr.label(default = "@jax_flash3_config//:cutlass_headers"),
        "_ffi": attr.label(default = "@jax_flash3_config//:ffi_headers"),
        "_cc_toolchain": attr.label(default = "@bazel_tools//tools/cpp:current_cc_toolchain"),
        "_compile": attr.label(default = "//bazel:compile.py", allow_single_file = True),
    },
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
    fragments = ["cpp"],
)

def _objects_impl(ctx):
    sel = selection(ctx, ctx.attr.instantiations)
    files = []
    for o in ctx.attr.objects:
        info = o[JaxFlash3ObjectInfo]
        if (info.group == "core" or
            (info.group == "hopper" and sel.hopper) or
            (info.group == "instantiation" and info.instantiation in sel.selected)):
            files.append(info.object)
    return [DefaultInfo(files = depset(files))]

jax_flash3_objects = rule(
    implementation = _objects_impl,
    doc = "The objects CMake would link into libjax_flash3_cuda.so under the current --define pruning.",
    attrs = {
        "objects": attr.label_list(providers = [JaxFlash3ObjectInfo]),
        "instantiations": attr.string_list(),
    },
)

def _package_library_impl(ctx):
    sel = selection(ctx, [])
    if sel.cuda_requested and CONFIG_ERRORS:
        fail("jax_flash3: " + "; ".join(CONFIG_ERRORS))
    if not sel.cuda:
        # As a CMake build without CUDA: the package is pure-Python (reference path only).
        return [DefaultInfo()]
    lib = ctx.file.library
    out = ctx.actions.declare_file("jax_flash3/" + lib.basename)
    ctx.actions.run_shell(
        inputs = [lib],
        outputs = [out],
        command = 'cp -f "$1" "$2"',
        arguments = [lib.path, out.path],
        mnemonic = "JaxFlash3CopyLibrary",
        progress_message = "Placing %s in the jax_flash3 package" % lib.basename,
    )
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out]))]

jax_flash3_package_library = rule(
    implementation = _package_library_impl,
    doc = "libjax_flash3_cuda.so at jax_flash3/libjax_flash3_cuda.so (the wheel's layout), or nothing when CUDA is off.",
    attrs = {"library": attr.label(allow_single_file = True, mandatory = True)},
)
