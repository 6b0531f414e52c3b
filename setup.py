"""Build sandlot: the ``sandlot._core`` extension and the runner binaries.

``pip install .`` (or ``pip install -e .``) compiles, with the system's
libcurl, msgpack-c, libevent, libseccomp and libnftables (Debian: libcurl4-openssl-dev,
libmsgpack-dev, libevent-dev, libseccomp-dev, libnftables-dev):

* ``sandlot._core``  - ext/*.c + csrc/{codec,transport}/*.c
* ``sandlot/_bin/sandlotd``     - the runner daemon, csrc/runner + csrc/sandbox + csrc/codec
* ``sandlot/_bin/sandlot-init`` - pid 1 of every sandbox, linked statically so it
  runs in any root filesystem (it is exec'd from a memfd, not from a path inside)

SANDLOT_DEV=1 adds -Werror (development and CI builds); SANDLOT_SANITIZE=1 builds
everything with ASan+UBSan.
"""

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
DEV = os.environ.get("SANDLOT_DEV") == "1"
SANITIZE = os.environ.get("SANDLOT_SANITIZE") == "1"

CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-fvisibility=hidden", "-O2", "-g"]
if DEV:
    CFLAGS.append("-Werror")
SAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"] if SANITIZE else []


def rel(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


CORE_INCLUDES = ["csrc/common", "csrc/codec", "csrc/transport", "ext"]

RUNNER_SOURCES = rel("csrc/runner/*.c") + rel("csrc/runner/*/*.c") + [p for p in rel("csrc/sandbox/*.c") if not p.endswith("init.c")] + rel("csrc/codec/*.c") + rel("csrc/vmguest/sl_vmframe.c")
INIT_SOURCES = rel("csrc/sandbox/init.c") + rel("csrc/sandbox/sl_ctl.c")
# pid 1 inside a microVM (issue 8): static, shares sl_ctl.c's spawn payload format.
VMINIT_SOURCES = rel("csrc/vmguest/*.c") + rel("csrc/sandbox/sl_ctl.c")
# csrc/runner/ is grouped by concern (api/, sandboxes/, functions/, ...); each
# folder's headers are included by bare name.
RUNNER_INCLUDES = ["csrc/runner"] + sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc/runner/*/")))
RUNNER_LIBS = ["event_core", "event_extra", "msgpackc", "seccomp", "nftables", "m",
               # issue 10: image pulls (images/): libcurl, JSON, sha256, gzip, zstd
               "curl", "jansson", "crypto", "z", "zstd"]


class BuildWithBinaries(build_ext):
    """build_ext that also compiles and links the two runner executables."""

    def run(self):
        super().run()
        self.build_binaries()

    def bin_dir(self):
        if self.inplace:
            return os.path.join(HERE, "python", "sandlot", "_bin")
        return os.path.join(self.build_lib, "sandlot", "_bin")

    def build_binaries(self):
        if not RUNNER_SOURCES or not INIT_SOURCES:
            return
        out = self.bin_dir()
        os.makedirs(out, exist_ok=True)
        cc = self.compiler
        tmp = os.path.join(self.build_temp, "bin")
        inc = ["csrc/common", "csrc/codec", "csrc/sandbox", "csrc/vmguest"] + RUNNER_INCLUDES
        objs = cc.compile(RUNNER_SOURCES, output_dir=os.path.join(tmp, "runner"), include_dirs=inc,
                          extra_preargs=CFLAGS + SAN)
        cc.link_executable(objs, "sandlotd", output_dir=out, libraries=RUNNER_LIBS,
                           extra_postargs=SAN)
        # init: static, no sanitizers (it must run inside arbitrary root filesystems).
        objs = cc.compile(INIT_SOURCES, output_dir=os.path.join(tmp, "init"), include_dirs=inc,
                          extra_preargs=CFLAGS)
        cc.link_executable(objs, "sandlot-init", output_dir=out, extra_postargs=["-static"])
        objs = cc.compile(VMINIT_SOURCES, output_dir=os.path.join(tmp, "vminit"), include_dirs=inc,
                          extra_preargs=CFLAGS)
        cc.link_executable(objs, "sandlot-vminit", output_dir=out, extra_postargs=["-static"])


ext = Extension(
    "sandlot._core",
    sources=rel("ext/*.c") + rel("csrc/codec/*.c") + rel("csrc/transport/*.c"),
    include_dirs=CORE_INCLUDES,
    libraries=["curl", "msgpackc", "pthread"],
    extra_compile_args=CFLAGS + SAN,
    extra_link_args=SAN,
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildWithBinaries},
    package_dir={"": "python"},
    packages=["sandlot", "sandlot.cluster"],
    package_data={"sandlot": ["py.typed", "*.pyi", "_bin/*"]},
)
