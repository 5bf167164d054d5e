"""Shared by bench/fleet.py and bench/site.py: a lab of N hosts with P profiles each, timed playbook runs."""
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
LAB_DIR = os.path.join(ROOT, "lab", "build", "bench", "run")
INVENTORY = os.path.join(ROOT, "lab", "build", "bench", "inventory")
PRISTINE = os.path.join(ROOT, "lab", "build", "bench", "pristine-homes")
# The PKCS#11 library both sides register: OpenSC's (a real middleware library, no card needed). The lab's
# SoftHSM2-backed stand-in is meant for one token user at a time, not for 50 hosts loading it at once.
MODULE = os.environ.get("BENCH_PKCS11_MODULE", "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")
EXTRA = ["-e", "tokentrust_token_module=%s" % MODULE]


def mitogen_env():
    """ANSIBLE_STRATEGY=mitogen_linear and its plugin path, when BENCH_MITOGEN=1 (mitogen importable: installed, or
    its wheel unpacked on PYTHONPATH); {} otherwise."""
    if os.environ.get("BENCH_MITOGEN") != "1":
        return {}
    import importlib.util

    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None:
        raise SystemExit("BENCH_MITOGEN=1 but ansible_mitogen is not importable: pip install mitogen (0.3.54 supports "
                         "ansible-core 2.19), or unpack its wheel and put it on PYTHONPATH")
    plugins = os.path.join(os.path.dirname(spec.origin), "plugins", "strategy")
    return {"ANSIBLE_STRATEGY_PLUGINS": plugins, "ANSIBLE_STRATEGY": "mitogen_linear"}


def env():
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles") + ":" + os.path.join(ROOT, "bench", "peer", "roles"),
                PATH=BIN + os.pathsep + os.environ["PATH"], ANSIBLE_FORKS=os.environ.get("ANSIBLE_FORKS", "20"),
                **mitogen_env())


def build_lab(hosts, profiles):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lab.build", "create", "--hosts", str(hosts), "--profiles", str(profiles),
                    "--dir", LAB_DIR, "--inventory", INVENTORY], cwd=ROOT, check=True, capture_output=True)
    homes = os.path.join(LAB_DIR, "homes")
    if os.path.exists(PRISTINE):
        shutil.rmtree(PRISTINE)
    shutil.copytree(homes, PRISTINE, symlinks=True)
    return time.perf_counter() - t


def reset_homes():
    """Every run starts from the same fresh profiles (and no policies or CA cache written by a previous run)."""
    homes = os.path.join(LAB_DIR, "homes")
    shutil.rmtree(homes)
    shutil.copytree(PRISTINE, homes, symlinks=True)
    for sub in ("hosts", "cache"):
        shutil.rmtree(os.path.join(LAB_DIR, sub), ignore_errors=True)


def destroy_lab():
    subprocess.run([sys.executable, "-m", "lab.build", "destroy", "--dir", LAB_DIR, "--inventory", INVENTORY],
                   cwd=ROOT, capture_output=True)
    shutil.rmtree(PRISTINE, ignore_errors=True)


def timed(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        bad = [ln for ln in (p.stdout + p.stderr).splitlines()
               if re.search(r"fatal:|\[ERROR\]|failed=[1-9]|unreachable=[1-9]|rc=", ln)]
        sys.stderr.write("\nrc %d; what failed:\n%s\n" % (p.returncode, "\n".join(bad[:40])))
        raise SystemExit("benchmark run failed: %s" % " ".join(cmd))
    changed = sum(int(c) for c in re.findall(r"changed=(\d+)", p.stdout))
    return dt, changed


def playbook(path):
    return timed([os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, path] + EXTRA)


def ping():
    return timed([os.path.join(BIN, "ansible"), "workstations", "-i", INVENTORY, "-m", "ansible.builtin.ping"])


def compare(ours_playbook, label, hosts, profiles):
    print("lab: %d hosts x %d profiles (+ Firefox's own), building..." % (hosts, profiles), flush=True)
    print("lab built in %.1f s" % build_lab(hosts, profiles), flush=True)
    try:
        reset_homes()
        ours1, c1 = playbook(ours_playbook)
        ours2, c2 = playbook(ours_playbook)
        reset_homes()
        peer1, p1 = playbook(os.path.join(ROOT, "bench", "peer", "naive.yml"))
        peer2, p2 = playbook(os.path.join(ROOT, "bench", "peer", "naive.yml"))
        pong, _ = ping()
    finally:
        destroy_lab()
    print("%-28s first run %7.1f s (changed=%d)   second run %7.1f s (changed=%d)" % (label, ours1, c1, ours2, c2))
    print("%-28s first run %7.1f s (changed=%d)   second run %7.1f s (changed=%d)" % (
        "naive certutil/modutil role", peer1, p1, peer2, p2))
    print("ansible -m ping, same hosts: %.1f s; our second run = %.2fx ping" % (pong, ours2 / pong))
    print("ratio: %.1f" % (peer1 / ours1))


# ---------------------------------------------------------------------------------------------
# fleet mode: the container fleet of lab/fleet.py, over SSH with become (bench/fleet.py --fleet, bench/site.py --fleet)

FLEET_DIR = os.environ.get("BENCH_FLEET_DIR", os.path.join(ROOT, "lab", "build", "bench-fleet", "run"))
FLEET_INVENTORY = os.path.join(os.path.dirname(FLEET_DIR), "inventory")


def fleet_compare(ours_playbook, label, hosts, rounds=3, peer=True):
    """Same comparison on N containers over SSH: each first run starts from fresh containers (profiles made by
    Firefox at image build, python3-cffi already there so that neither side pays for a package download).

    `rounds` times each measure, in turns (ours, the peer, ping), and keeps the best of each: on a shared machine
    a run slowed by someone else's work says nothing about either side; every round is printed too."""
    sys.path.insert(0, ROOT)
    from lab import fleet as fl

    print("fleet: %d containers over SSH on 127.0.0.1, building..." % hosts, flush=True)
    t = time.perf_counter()
    m = fl.create(FLEET_DIR, hosts=hosts, inventory=FLEET_INVENTORY, cffi="all")
    print("fleet ready in %.1f s (image %s)" % (time.perf_counter() - t, m["images"]["ws"]), flush=True)
    # the middleware stage (on by default) is off: the naive peer installs none, and a package install would be
    # a download, not our code
    base = ["-i", m["inventory"], "-e", "@" + m["lab_vars"], "-e", "bench_hosts=linux",
            "-e", "tokentrust_token_middleware_linux=false"]
    peer_extra = ["-e", "naive_nss_home=/home", "-e", "naive_nss_copy=true", "--become"]

    def run(pb, extra=()):
        return timed([os.path.join(BIN, "ansible-playbook"), pb, *base, *extra])

    def say(what, secs):
        print("round %d: %s %.1f s (%.0f ms/host)" % (r, what, secs, 1000.0 * secs / hosts), flush=True)

    def fresh():
        return fl.reset_hosts(m, workers=int(os.environ.get("BENCH_RESET_WORKERS", "6")))

    r = 0
    seen = {k: [] for k in ("ours1", "ours2", "peer1", "peer2", "ping")}
    changes = {}
    try:
        for r in range(1, rounds + 1):
            t = fresh()
            print("round %d: %d fresh containers in %.1f s" % (r, hosts, t), flush=True)
            o1, changes["ours1"] = run(ours_playbook)
            say("ours first run", o1)
            o2, changes["ours2"] = run(ours_playbook)
            say("ours second run", o2)
            pong, _ = timed([os.path.join(BIN, "ansible"), "linux", "-i", m["inventory"], "-m", "ansible.builtin.ping"])
            say("ansible -m ping", pong)
            if peer:
                fresh()
                naive = os.path.join(ROOT, "bench", "peer", "naive.yml")
                p1, changes["peer1"] = run(naive, peer_extra)
                say("peer first run", p1)
                if os.environ.get("BENCH_PEER_ONCE") == "1":  # the ratio needs only the peer's first run
                    p2, changes["peer2"] = 0.0, 0
                else:
                    p2, changes["peer2"] = run(naive, peer_extra)
                    say("peer second run", p2)
            else:
                p1 = p2 = changes["peer1"] = changes["peer2"] = 0
            for k, v in zip(seen, (o1, o2, p1, p2, pong)):
                seen[k].append(v)
    finally:
        fl.destroy(FLEET_DIR)
    best = {k: min(v) for k, v in seen.items()}
    if rounds > 1:
        print("best of %d rounds:" % rounds)
    print("%-28s first run %7.1f s (changed=%d)   second run %7.1f s (changed=%d)" % (
        label, best["ours1"], changes["ours1"], best["ours2"], changes["ours2"]))
    print("%-28s first run %7.1f s (changed=%d)   second run %7.1f s (changed=%d)" % (
        "naive certutil/modutil role", best["peer1"], changes["peer1"], best["peer2"], changes["peer2"]))
    print("ansible -m ping, same hosts over SSH: %.1f s; our second run = %.2fx ping" % (
        best["ping"], best["ours2"] / best["ping"]))
    print("per host: ours first %.0f ms, second %.0f ms; peer first %.0f ms; ping %.0f ms" % tuple(
        1000.0 * best[k] / hosts for k in ("ours1", "ours2", "peer1", "ping")))
    if mitogen_env():
        print("strategy: mitogen_linear (ansible-playbook and the ping)")
    if peer:
        print("ratio: %.1f" % (best["peer1"] / best["ours1"]))


def fleet_args(argv):
    """bench/fleet.py --fleet [HOSTS=5] [--rounds N=3] [--no-peer]"""
    args = [a for a in argv if a not in ("--fleet", "--no-peer")]
    rounds = 3
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i:i + 2]
    return (int(args[0]) if args else 5), rounds
