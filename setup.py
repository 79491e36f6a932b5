"""Builds the MPS chains kernel (heads/csrc/mps_chains.cc, loaded by heads.mps_ffi through ctypes).

Everything else is in pyproject.toml. The build needs only a C++17 compiler: the XLA FFI headers are
vendored (heads/csrc/xla, Apache-2.0). Without a compiler the extension is skipped with a warning and
heads.mps runs its XLA chains. No -march=native: the library carries AVX-512, AVX2+FMA and baseline
code and picks one at load time, so a wheel built on one x86-64 machine runs on another.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "heads._mps_chains",
            sources=["heads/csrc/mps_chains.cc"],
            include_dirs=["heads/csrc"],
            depends=["heads/csrc/mps_chains_impl.inc"],
            language="c++",
            extra_compile_args=[
                "-std=c++17",
                "-O3",
                "-g0",
                "-ffp-contract=fast",
                "-fno-wrapv",
                "-Wno-return-type",
                "-Wno-sign-compare",
            ],
            optional=True,
        )
    ]
)
