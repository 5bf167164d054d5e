"""A PKCS#11 library is proved before it is registered (issue 29, item 4).

Libraries that cannot work, built here with gcc or taken from the system: one that segfaults when loaded (a
constructor), one whose C_GetFunctionList segfaults, one whose C_Initialize segfaults, libz (a shared library, not
PKCS#11), a 32-bit ELF (the same bytes with the class byte of a 32-bit object). nss_pkcs11_module (and so
nss_provision, the same path) runs as root through ansible; asserted: the library is not in pkcs11.txt, the result
names the file and what it did, the run itself survived, and OpenSC (a real PKCS#11 library) still registers. Then
Firefox ESR starts on the profile the run touched (it exited with SIGSEGV on main, the library registered).
"""
import os
import shutil
import subprocess

import pytest

from tests.support.ansible_run import run_module
from tests.support.firefox import FIREFOX, create_profile

OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the module runs as root, as on a workstation")

SOURCES = {
    "crash_on_load": """
        __attribute__((constructor)) static void boom(void) { *(volatile int *)0 = 1; }
        unsigned long C_GetFunctionList(void **p) { return 0; }
    """,
    "crash_in_getfunctionlist": """
        unsigned long C_GetFunctionList(void **p) { *(volatile int *)0 = 1; return 0; }
    """,
    "crash_in_initialize": """
        typedef unsigned long (*fn)(void *);
        static unsigned long init(void *a) { *(volatile int *)0 = 1; return 0; }
        static unsigned long fin(void *a) { return 0; }
        static struct { unsigned char major, minor; fn f[68]; } list = {2, 40, {init, fin}};
        unsigned long C_GetFunctionList(void **p) { *p = &list; return 0; }
    """,
}


def build(tmp, name):
    src = tmp / (name + ".c")
    src.write_text(SOURCES[name])
    lib = tmp / ("lib%s.so" % name)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-o", str(lib), str(src)], check=True)
    return str(lib)


@pytest.fixture
def libdir():
    """Where a user's Firefox (and the proof's child, as nobody) can read the library: pytest's tmp is root-only."""
    import pathlib
    import tempfile
    d = tempfile.mkdtemp(prefix="tt-libs-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def profile(tmp_path):
    d = tmp_path / "profile"
    d.mkdir()
    return str(d)


@pytest.mark.parametrize("kind,said", [
    ("crash_on_load", "crashed when loaded and initialized as a PKCS#11 module (SIGSEGV"),
    ("crash_in_getfunctionlist", "crashed when loaded and initialized as a PKCS#11 module (SIGSEGV"),
    ("crash_in_initialize", "crashed when loaded and initialized as a PKCS#11 module (SIGSEGV"),
    ("libz", "is not a PKCS#11 library (it has no C_GetFunctionList)"),
    ("elf32", "is a 32-bit library"),
])
def test_a_library_that_cannot_work_is_not_registered(tmp_path, libdir, kind, said):
    if kind == "libz":
        lib = LIBZ
    elif kind == "elf32":
        data = bytearray(open(LIBZ, "rb").read())
        data[4] = 1  # EI_CLASS: ELFCLASS32
        lib = str(libdir / "lib32.so")
        open(lib, "wb").write(bytes(data))
        os.chmod(lib, 0o755)
    else:
        lib = build(libdir, kind)
    db = profile(tmp_path)
    for check in (True, False):
        r = run_module("nss_pkcs11_module", {"databases": [db], "name": "gem", "library": lib}, check=check)
        mod = r["databases"][0]
        assert r["changed"] is False, r
        assert said in (mod.get("error") or "") and lib in mod["error"], r
        assert "not registered" in mod["error"] or "cannot load" in mod["error"], r
    txt = os.path.join(db, "pkcs11.txt")
    assert not os.path.exists(txt) or lib not in open(txt).read()


def test_a_real_pkcs11_library_is_registered(tmp_path):
    db = profile(tmp_path)
    r = run_module("nss_pkcs11_module", {"databases": [db], "name": "gem", "library": OPENSC})
    assert r["changed"] is True and not r["databases"][0].get("error"), r
    assert "library=%s" % OPENSC in open(os.path.join(db, "pkcs11.txt")).read()


@pytest.mark.firefox
@pytest.mark.slow
def test_firefox_still_starts_on_the_profile_the_run_touched(tmp_path, libdir):
    lib = build(libdir, "crash_in_initialize")
    home = tmp_path / "home"
    home.mkdir()
    prof = create_profile(str(home), "tt")
    r = run_module("nss_provision", {"databases": [prof], "module_name": "gem", "module_library": lib})
    shot = tmp_path / "shot.png"
    env = dict(os.environ, MOZ_HEADLESS="1", HOME=str(home))
    p = subprocess.run([FIREFOX, "--headless", "--no-remote", "-profile", prof, "--screenshot", str(shot),
                        "about:blank"], env=env, capture_output=True, timeout=180)
    assert p.returncode == 0 and shot.exists(), (p.returncode, p.stderr[-2000:])
    assert "crashed" in (r["databases"][0]["module"] or {}).get("error", ""), r
    shutil.rmtree(str(home), ignore_errors=True)
