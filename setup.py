"""Build of the optional native extension ``spark_kms.crypto._fastgcm``; all other metadata is in pyproject.toml.

Why a setup.py: ``[tool.setuptools] ext-modules`` in pyproject.toml only exists from setuptools 74.1 on (and is
marked experimental), while dev installs with ``--no-build-isolation`` use the venv's setuptools (65.x here).

The extension is ``optional=True``: without a C compiler or the OpenSSL 3 headers (Debian: libssl-dev) the
build warns and installs the pure-Python package, which then runs the ``cryptography`` path
(``spark_kms.crypto.native_available()`` is False).
"""

from pathlib import Path

from setuptools import Extension, setup

#: The bundled libsodium `make install` builds (Makefile "SODIUM_PIN"; spark_kms/crypto/_gcm_backend.h): linked
#: in, its symbols hidden, when present. Without it the extension loads the system's libsodium, else OpenSSL.
SODIUM_A = Path(__file__).parent / "build" / "libsodium" / "lib" / "libsodium.a"
bundled = SODIUM_A.is_file()

setup(
    ext_modules=[
        Extension(
            "spark_kms.crypto._fastgcm",
            sources=["spark_kms/crypto/_fastgcm.c"],
            depends=["spark_kms/crypto/_gcm_backend.h"],
            libraries=["crypto", "dl"],
            define_macros=[("SKG_SODIUM_BUNDLED", "1")] if bundled else [],
            extra_objects=[str(SODIUM_A)] if bundled else [],
            extra_link_args=["-Wl,--exclude-libs,ALL"] if bundled else [],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ],
)
