"""Build script: Cython extensions from pyx/ and the cffi shared-memory ring from csrc/.

The build produces every extension or fails loudly. DATASYNC_NO_EXTENSIONS=1 is the
explicit pure-Python build (the package then runs on its twins). DATASYNC_DEBUG=1
turns on C asserts, Cython bounds checks and line tracing: never in release builds.
"""

import glob
import os

from setuptools import Extension, setup

# (module name, source): explicit names because pyx/ lives outside the package.
CYTHON_EXTENSIONS = [
    ("datasync._buffer_c", "pyx/_buffer.pyx"),
    ("datasync._codec_c", "pyx/_codec.pyx"),
]
CFFI_MODULES: list[str] = ["csrc/build_shmring.py:ffibuilder"]

NO_EXTENSIONS = os.environ.get("DATASYNC_NO_EXTENSIONS", "") == "1"
DEBUG = os.environ.get("DATASYNC_DEBUG", "") == "1"


def cython_extensions() -> list[Extension]:
    from Cython.Build import cythonize

    macros = [] if DEBUG else [("NDEBUG", "1")]
    if DEBUG:
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    extra = ["-O0", "-g"] if DEBUG else ["-O3"]
    # The C helpers are headers beside the .pyx files (included from `cdef extern from`):
    # a change to one rebuilds the extensions.
    headers = sorted(glob.glob("pyx/*.h"))
    exts = [
        Extension(
            name,
            [src],
            include_dirs=["pyx"],
            depends=headers,
            define_macros=macros,
            extra_compile_args=extra,
        )
        for name, src in CYTHON_EXTENSIONS
    ]
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "cdivision": True,
        "initializedcheck": DEBUG,
        "linetrace": DEBUG,
        "embedsignature": True,
    }
    return cythonize(exts, include_path=["pyx"], compiler_directives=directives)


if NO_EXTENSIONS:
    setup(ext_modules=[])
else:
    setup(ext_modules=cython_extensions(), cffi_modules=CFFI_MODULES)
