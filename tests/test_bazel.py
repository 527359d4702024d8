"""The Bazel build (BUILD.bazel; README.md, "Building with Bazel"): it builds the library and
package CMake builds, and its py_test passes.

CI reaches Bazel through pytest. When `bazel` is not on the PATH, this module installs Debian's
`bazel-bootstrap` (Bazel 4.2.3, offline-capable) with apt-get if it runs as root, unless
JAX_FLASH3_CI_INSTALL_BAZEL=0; otherwise the Bazel tests skip, saying why. Then it runs:

    bazel build --config=ci //:jax_flash3 //:fwd_sm90_bf16_hdim128
    bazel test  --config=ci //:cpu_tests --test_arg=-k --test_arg="<fast subset>"

(--config=ci in .bazelrc prunes the library to one Hopper instantiation, as CMake's
-DJAX_FLASH3_HEAD_DIMS=128 -DJAX_FLASH3_DTYPES=bf16 -DJAX_FLASH3_BACKWARD=OFF
-DJAX_FLASH3_FP8_HEAD_DIMS= would), and checks,
against a CMake configure of the same pruning, that Bazel compiles the same sources with the same
definitions and flags. Bazel's output root is JAX_FLASH3_BAZEL_OUTPUT_ROOT (default
/tmp/jax_flash3-bazel-<uid>); no bazel-* symlinks are left in the checkout.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# .bazelrc's --config=ci (an empty FP8 list: no FP8 instantiation)
CI_CONFIG = {"head_dims": "128", "dtypes": "bf16", "backward": "OFF", "fp8_head_dims": ""}
INSTANTIATION = "fwd_sm90_bf16_hdim128"
CPU_SUBSET = "validation or default or refused"  # fast tests of tests/test_api.py (~15 s)
SYMBOLS = (
    "jax_flash3_fwd",
    "jax_flash3_bwd",
    "jax_flash3_fwd_workspace_bytes",
    "jax_flash3_bwd_workspace_bytes",
    "jax_flash3_fwd_fp8",
    "jax_flash3_fwd_fp8_workspace_bytes",
)
BAZEL_TIMEOUT_S = 3600


# --------------------------------------------------------------------------------------------
# CMake and Bazel state the same defaults and flags (no Bazel needed)


def _bzl_list(text: str, name: str) -> list[str]:
    m = re.search(rf"^{name} = (\[.*?\])\n", text, re.DOTALL | re.MULTILINE)
    assert m, f"{name} not found in bazel/jax_flash3.bzl"
    return ast.literal_eval(re.sub(r"#[^\n]*", "", m.group(1)))


def _cmake_set(text: str, name: str) -> list[str]:
    m = re.search(rf'set\({name} "([^"]*)"', text)
    assert m, f"set({name} ...) not found in CMakeLists.txt"
    return m.group(1).split(";")


def test_bazel_defaults_and_flags_match_cmake():
    bzl = (ROOT / "bazel" / "jax_flash3.bzl").read_text()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert _bzl_list(bzl, "DEFAULT_HEAD_DIMS") == _cmake_set(cmake, "JAX_FLASH3_HEAD_DIMS")
    assert _bzl_list(bzl, "DEFAULT_DTYPES") == _cmake_set(cmake, "JAX_FLASH3_DTYPES")
    assert _bzl_list(bzl, "DEFAULT_BWD_HEAD_DIMS") == _cmake_set(cmake, "JAX_FLASH3_BWD_HEAD_DIMS")
    assert _bzl_list(bzl, "DEFAULT_BWD_DTYPES") == _cmake_set(cmake, "JAX_FLASH3_BWD_DTYPES")
    assert _bzl_list(bzl, "DEFAULT_FP8_HEAD_DIMS") == _cmake_set(cmake, "JAX_FLASH3_FP8_HEAD_DIMS")
    defs = re.search(r"target_compile_definitions\(jax_flash3_cuda PRIVATE ([^)]*)\)", cmake)
    cmake_defs = [t for t in defs.group(1).split() if not t.startswith("$")]
    assert sorted(_bzl_list(bzl, "COMMON_DEFINES")) == sorted(cmake_defs)
    cuda = re.search(r"\$<\$<COMPILE_LANGUAGE:CUDA>:([^>]*)>", cmake).group(1).split()
    assert set(cuda) <= set(_bzl_list(bzl, "NVCC_FLAGS")), "NVCC_FLAGS lacks CMake's CUDA options"
    cxx = re.search(r"\$<\$<COMPILE_LANGUAGE:CXX>:([^>]*)>", cmake).group(1).split()
    assert set(cxx) <= set(_bzl_list(bzl, "CXX_FLAGS")), "CXX_FLAGS lacks CMake's C++ options"


# --------------------------------------------------------------------------------------------
# Bazel itself


def _install_bazel() -> str | None:
    """Install Debian's bazel-bootstrap; return why not, or None when `bazel` is now there."""
    if os.environ.get("JAX_FLASH3_CI_INSTALL_BAZEL", "1") == "0":
        return "JAX_FLASH3_CI_INSTALL_BAZEL=0"
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "installing it needs root and apt-get: apt-get install -y bazel-bootstrap"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "bazel-bootstrap"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:  # stale or missing package lists
        subprocess.run(
            ["apt-get", "update", "-q"], env=env, capture_output=True, text=True, check=False
        )
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0 or not shutil.which("bazel"):
        return "apt-get install -y bazel-bootstrap failed: " + (r.stderr or r.stdout)[-500:]
    return None


def _nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


def _cuda_off() -> bool:
    return os.environ.get("JAX_FLASH3_CUDA", "").strip() in ("0", "OFF", "off", "false", "no")


class Bazel:
    def __init__(self, exe: str):
        self.exe = exe
        root = os.environ.get("JAX_FLASH3_BAZEL_OUTPUT_ROOT") or os.path.join(
            tempfile.gettempdir(), f"jax_flash3-bazel-{os.getuid()}"
        )
        # --max_idle_secs: the server goes away by itself after CI.
        self.startup = [f"--output_user_root={root}", "--max_idle_secs=300"]
        # The interpreter running these tests (it has jax and pytest) is Bazel's Python too;
        # --symlink_prefix=/ leaves no bazel-* symlinks in the checkout.
        self.common = [
            f"--repo_env=PYTHON_BIN_PATH={sys.executable}",
            "--symlink_prefix=/",
            "--color=no",
            "--curses=no",
            "--noshow_progress",
            "--config=ci",
        ]

    def __call__(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.exe, *self.startup, command, *self.common, *args]
        r = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=BAZEL_TIMEOUT_S, check=False
        )
        if check and r.returncode != 0:
            pytest.fail(
                f"`{shlex.join(cmd)}` exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
            )
        return r

    def info(self, key: str) -> pathlib.Path:
        out = self("info", key).stdout.strip().splitlines()[-1]
        return pathlib.Path(out)

    def shutdown(self):
        subprocess.run(
            [self.exe, *self.startup, "shutdown"], cwd=ROOT, capture_output=True, check=False
        )


@pytest.fixture(scope="module")
def bazel():
    exe = shutil.which("bazel")
    if exe is None:
        why = _install_bazel()
        if why is not None:
            pytest.skip(f"bazel is not on the PATH and was not installed: {why}")
        exe = shutil.which("bazel")
    b = Bazel(exe)
    yield b
    b.shutdown()


@pytest.fixture(scope="module")
def built(bazel):
    """bazel build --config=ci //:jax_flash3 [//:fwd_sm90_bf16_hdim128]; returns bazel-bin."""
    cuda = _nvcc() is not None and not _cuda_off()
    targets = ["//:jax_flash3"] + ([f"//:{INSTANTIATION}"] if cuda else [])
    bazel("build", *targets)
    return bazel.info("bazel-bin"), cuda


def test_bazel_builds_package_with_library(built):
    bin_dir, cuda = built
    lib = bin_dir / "jax_flash3" / "libjax_flash3_cuda.so"
    if not cuda:
        pytest.skip("no nvcc (or JAX_FLASH3_CUDA=0): //:jax_flash3 is pure-Python here")
    assert lib.is_file()
    handle = ctypes.CDLL(str(lib))  # RTLD_NOW: every symbol resolves (static cudart linked in)
    assert all(hasattr(handle, s) for s in SYMBOLS)
    data = lib.read_bytes()
    assert b"sm_90a" in data, "no sm_90a code in the library"


def test_bazel_builds_one_instantiation(built):
    bin_dir, cuda = built
    if not cuda:
        pytest.skip("no nvcc (or JAX_FLASH3_CUDA=0): no kernel instantiation to build")
    obj = (
        bin_dir / "_objs" / "jax_flash3_cuda" / "kernels" / "instantiations" / f"{INSTANTIATION}.o"
    )
    data = obj.read_bytes()
    assert b"sm_90a" in data and b"compute_90a" not in data, "want SASS for sm_90a only"


def test_bazel_cpu_tests(bazel, built):
    r = bazel("test", "//:cpu_tests", "--test_arg=-k", f"--test_arg={CPU_SUBSET}", check=False)
    log = bazel.info("bazel-testlogs") / "cpu_tests" / "test.log"
    text = log.read_text() if log.exists() else ""
    assert r.returncode == 0, f"bazel test //:cpu_tests failed:\n{r.stderr[-3000:]}\n{text[-6000:]}"
    assert re.search(r"\d+ passed", text), text[-2000:]
    if built[1]:
        assert "cpu_tests: loaded" in text, "the py_test did not get the Bazel-built library"


# --------------------------------------------------------------------------------------------
# Bazel compiles what CMake compiles, as CMake compiles it


def _cmake_compiles(build_dir: pathlib.Path) -> dict[str, dict]:
    """{source relative to csrc: {"defines", "flags"}} of what CMake links into the library."""
    ninja = (build_dir / "build.ninja").read_text()
    link = (
        re.search(r"^build libjax_flash3_cuda\.so: \S+ ([^|\n]*)", ninja, re.MULTILINE)
        .group(1)
        .split()
    )
    out = {}
    for block in re.finditer(
        r"^build (\S+\.o): (\S+) (\S+)[^\n]*\n((?:  [^\n]*\n)*)", ninja, re.MULTILINE
    ):
        obj, rule, src = block.group(1), block.group(2), block.group(3)
        if obj not in link:
            continue
        var = dict(re.findall(r"^  (\w+) = ([^\n]*)$", block.group(4), re.MULTILINE))
        toks = shlex.split(var.get("FLAGS", "")) + shlex.split(var.get("DEFINES", ""))
        defines = {t[2:] for t in toks if t.startswith("-D")} - {"jax_flash3_cuda_EXPORTS"}
        flags = [t for t in toks if not t.startswith("-D")]
        rel = os.path.relpath(src, ROOT / "csrc")
        out[rel] = {"defines": defines, "flags": flags, "cuda": rule.startswith("CUDA")}
    return out


def _bazel_compiles(bazel: Bazel) -> dict[str, dict]:
    q = 'mnemonic("JaxFlash3Nvcc|JaxFlash3Cxx|CppLink", deps(//:libjax_flash3_cuda.so))'
    actions = json.loads(bazel("aquery", q, "--output=jsonproto").stdout or "{}").get("actions", [])
    link = next(a for a in actions if a["mnemonic"] == "CppLink")
    linked = {a for a in link["arguments"] if a.endswith(".o")}
    out = {}
    for a in actions:
        if a["mnemonic"] == "CppLink":
            continue
        args = a["arguments"]
        args = args[args.index("--") + 2 :]  # python3 bazel/compile.py ... -- COMPILER ARG...
        if args[args.index("-o") + 1] not in linked:
            continue
        src = args[args.index("-c") + 1]
        defines, flags, skip = set(), [], False
        for t in args:
            if skip:
                skip = False
            elif t in ("-isystem", "-ccbin", "-c", "-o"):
                skip = True
            elif t.startswith("-D"):
                defines.add(t[2:])
            elif not t.startswith("-I"):
                flags.append(t)
        out[os.path.relpath(src, "csrc")] = {"defines": defines, "flags": flags}
    return out


def _effective(flags: list[str]) -> set[str]:
    """Flags as a set, with only the last -O level (CMake's Release -O3 then the target's -O2)."""
    opt = [f for f in flags if re.fullmatch(r"-O\d", f)]
    rest = {f for f in flags if not re.fullmatch(r"-O\d", f)} - {"-std=c++17"}
    return rest | set(opt[-1:])


def test_bazel_compiles_what_cmake_compiles(bazel, built, tmp_path):
    if not built[1]:
        pytest.skip("no nvcc (or JAX_FLASH3_CUDA=0): neither build compiles anything")
    cmake, ninja = shutil.which("cmake"), shutil.which("ninja")
    if not cmake or not ninja:
        pytest.skip("cmake and ninja are needed to compare with the CMake build")
    defs = [f"-DJAX_FLASH3_{k.upper()}={v}" for k, v in CI_CONFIG.items()]
    cmd = [
        cmake,
        "-S",
        str(ROOT),
        "-B",
        str(tmp_path),
        "-G",
        "Ninja",
        *defs,
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    want, got = _cmake_compiles(tmp_path), _bazel_compiles(bazel)
    assert sorted(got) == sorted(want), "Bazel and CMake link different sources"
    for src in want:
        assert got[src]["defines"] == want[src]["defines"], src
        assert _effective(got[src]["flags"]) == _effective(want[src]["flags"]), src
