"""Build the optional C accelerator for Merkle hashing; everything else is in pyproject.toml.

The extension is optional: without a C compiler or the OpenSSL headers (Debian: gcc, libssl-dev,
python3-dev) the install still succeeds and sampledrec uses its pure-Python hashing.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sampledrec.log._merklefast",
            ["src/sampledrec/log/_merklefast.c", "src/sampledrec/log/_decisionscan.c"],
            depends=["src/sampledrec/log/_decisionlayout.h"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wno-deprecated-declarations"],
            optional=True,
        )
    ]
)
