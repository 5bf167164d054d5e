"""The VM image built beside the other tests: when a session selects VM tests (marker `vm`), tests/conftest.py starts
the image build (lab/vm.py build_image: debootstrap, packages, mkfs; about 3.5 min cold) in a thread as soon as the
tests are collected, so that it runs while the tests before tests/vm wait on their subprocesses; the `vm` fixture
waits for it before it boots. A build that fails here is simply built again by the fixture, which reports the error.

TOKENTRUST_VM_EARLY=0 turns it off (the image is then built when the first VM test needs it).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from lab import vm as vmlab

SUITE = os.environ.get("TOKENTRUST_VM_SUITE") or vmlab.SUITE
LOG = Path(vmlab.__file__).resolve().parent / "build" / f"vm-image-{SUITE}.log"

_thread: threading.Thread | None = None
_result: dict = {}


def _build() -> None:
    t0 = time.monotonic()
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as f:
        def log(m: str) -> None:
            f.write(time.strftime("%H:%M:%S ") + m + "\n")
            f.flush()

        try:
            info = vmlab.build_image(SUITE, log)
            _result.update(built=info.get("built"), seconds=round(time.monotonic() - t0, 1))
            log(f"vm image {SUITE}: {'built' if info.get('built') else 'reused'} in {_result['seconds']} s")
        except Exception as e:  # noqa: BLE001 - the fixture builds again and reports it
            _result.update(error=str(e))
            log(f"vm image {SUITE}: early build failed: {e} (the vm fixture tries again)")


def wanted(items) -> bool:
    return os.environ.get("TOKENTRUST_VM_EARLY", "1") != "0" and os.geteuid() == 0 \
        and any(i.get_closest_marker("vm") for i in items)


def start() -> None:
    global _thread
    if _thread is None and not vmlab.image_ready(SUITE):
        _thread = threading.Thread(target=_build, name="vm-image-early", daemon=True)
        _thread.start()


def wait() -> dict:
    """Until the early build (if any) is over: what it did ({} when none ran)."""
    if _thread is not None:
        _thread.join()
    return dict(_result)
