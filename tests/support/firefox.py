"""Real Firefox ESR, headless, driven over Marionette (marionette-driver): the browser proofs."""
import os
import shutil
import signal
import socket
import subprocess
import time

from marionette_driver import errors
from marionette_driver.marionette import Marionette

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox") or "/usr/lib/firefox-esr/firefox-esr"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Firefox:
    """Start Firefox on an existing profile with Marionette; `load(url)` returns ('ok', text) or ('error', why)."""

    socket_timeout = 360  # marionette_driver's default: how long a command may go unanswered

    def __init__(self, profile, user=None, extra_prefs=None, binary=None, log=None):
        self.profile = str(profile)
        self.user = user
        self.port = free_port()
        self.binary = binary or FIREFOX
        self.log = log or os.path.join(os.path.dirname(self.profile), os.path.basename(self.profile) + ".ff.log")
        prefs = {
            "marionette.port": self.port,
            "browser.shell.checkDefaultBrowser": False,
            "browser.startup.homepage_override.mstone": "ignore",
            "datareporting.policy.dataSubmissionEnabled": False,
            "toolkit.telemetry.reportingpolicy.firstRun": False,
            "app.update.disabledForTesting": True,
            "network.captive-portal-service.enabled": False,
            "network.connectivity-service.enabled": False,
            "browser.safebrowsing.update.enabled": False,
            "security.OCSP.enabled": 0,
            "security.remote_settings.crlite_filters.enabled": False,
            "security.enterprise_roots.enabled": False,
        }
        prefs.update(extra_prefs or {})
        lines = []
        for k, v in prefs.items():
            val = ("true" if v else "false") if isinstance(v, bool) else (repr(v) if isinstance(v, int)
                                                                           else '"%s"' % v)
            lines.append('user_pref("%s", %s);\n' % (k, val))
        self._append_prefs("".join(lines))
        self.proc = None
        self.client = None

    def _append_prefs(self, text):
        with open(os.path.join(self.profile, "user.js"), "a") as f:
            f.write(text)
        if self.user:
            subprocess.run(["chown", "%s:" % self.user, os.path.join(self.profile, "user.js")], check=True)

    def _command(self):
        """(argv, env) that start Firefox with Marionette on self.port."""
        env = dict(os.environ, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1")
        env.pop("DISPLAY", None)
        cmd = [self.binary, "--headless", "--no-remote", "--marionette", "-remote-allow-system-access",
               "-profile", self.profile, "about:blank"]
        if self.user:
            import pwd

            pw = pwd.getpwnam(self.user)
            env["HOME"] = pw.pw_dir
            cmd = ["runuser", "-u", self.user, "--", "env", "HOME=%s" % pw.pw_dir, "MOZ_HEADLESS=1"] + cmd
        return cmd, env

    def _signal(self, sig):
        os.killpg(self.proc.pid, sig)

    def __enter__(self):
        cmd, env = self._command()
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("Firefox exited early (%s): see %s" % (self.proc.returncode, self.log)) from None
                time.sleep(0.3)
        self.client = Marionette(host="127.0.0.1", port=self.port, socket_timeout=self.socket_timeout)
        self.client.start_session({"acceptInsecureCerts": False})
        return self

    def load(self, url, timeout=30):
        self.client.timeout.page_load = timeout
        try:
            self.client.navigate(url)
        except errors.InsecureCertificateException as exc:
            return "insecure", str(exc)
        except errors.MarionetteException as exc:
            return "error", str(exc)
        text = self.client.execute_script("return document.body ? document.body.innerText : ''")
        if self.client.get_url().startswith("about:"):
            return "error", text
        return "ok", text

    def quit(self):
        if self.client is not None:
            try:
                self.client.quit(in_app=True)
            except Exception:  # noqa: BLE001 - fall back to a signal below
                pass
            self.client = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.proc.wait()
            self.proc = None
        self._logf.close()

    def __exit__(self, *exc):
        self.quit()
        return False


class ContainerFirefox(Firefox):
    """Real Firefox ESR inside a fleet workstation (lab/fleet.py), started as `user` with `docker exec` and driven from
    here over Marionette: the containers share this machine's network, so the Marionette port Firefox opens on
    127.0.0.1 in the container is reachable here. `profile` is the path inside the container; the log stays here."""

    socket_timeout = 150  # a modal prompt nobody answers blocks a command: fail in minutes, not six

    def __init__(self, container, profile, user, log, extra_prefs=None):
        self.container = container
        self.pidfile = None
        super().__init__(profile, user=user, extra_prefs=extra_prefs, binary="firefox-esr", log=log)

    def _exec(self, *argv, user=None, **kw):
        home = "/root" if (user or self.user) == "root" else "/home/%s" % (user or self.user)
        return subprocess.run(["docker", "exec", "-i", "-u", user or self.user, "-e", "HOME=%s" % home, self.container,
                               *argv], capture_output=True, timeout=60, **kw)

    def _append_prefs(self, text):
        p = self._exec("sh", "-c", 'cat >> "$1"', "sh", os.path.join(self.profile, "user.js"), input=text.encode())
        assert p.returncode == 0, p.stderr
        # a Firefox that did not end cleanly leaves its lock behind: the profile would be "already in use"
        self._exec("sh", "-c", 'rm -f "$1/lock" "$1/.parentlock"', "sh", self.profile)

    def _command(self):
        self.pidfile = "/tmp/tokentrust-firefox-%d.pid" % self.port
        home = "/home/%s" % self.user
        script = ('echo $$ > "$1"; exec firefox-esr --headless --no-remote --marionette -remote-allow-system-access '
                  '-profile "$2" about:blank')
        cmd = ["docker", "exec", "-u", self.user, "-e", "HOME=%s" % home, "-e", "MOZ_HEADLESS=1",
               "-e", "MOZ_CRASHREPORTER_DISABLE=1", "-e", "MOZ_DISABLE_NONLOCAL_CONNECTIONS=1", self.container,
               "sh", "-c", script, "sh", self.pidfile, self.profile]
        return cmd, dict(os.environ)

    def _signal(self, sig):
        """The Firefox we started in the container, by the pid it wrote (never by name)."""
        self._exec("sh", "-c", 'kill -%d "$(cat "$1")"' % int(sig), "sh", self.pidfile)


# Firefox's own PIN prompt ("Please authenticate to the security device (<token>)."), answered from chrome context: an
# observer of "common-dialog-loaded" types the PIN into password1Textbox and accepts (Marionette's prompt commands do
# not support password prompts). It answers at most arguments[1] prompts and counts them in prefs
# tokentrust.test.prompts / tokentrust.test.prompt (the last prompt's text). Use with unhandledPromptBehavior "ignore".
TYPE_PIN_INTO_PROMPT = """
const pin = arguments[0];
let left = arguments[1];
const obs = { observe(win, topic) {
  const doc = win.document;
  const box = doc.getElementById("password1Textbox");
  if (!box) return;
  Services.prefs.setStringPref("tokentrust.test.prompt", (doc.getElementById("infoBody") || {}).textContent || "");
  Services.prefs.setIntPref("tokentrust.test.prompts", Services.prefs.getIntPref("tokentrust.test.prompts", 0) + 1);
  box.value = pin;
  left -= 1;
  if (left <= 0) Services.obs.removeObserver(obs, "common-dialog-loaded");
  (doc.getElementById("commonDialog") || doc.querySelector("dialog")).acceptDialog();
}};
Services.obs.addObserver(obs, "common-dialog-loaded");
return true;
"""

LIST_MODULES = """
const mdb = Cc["@mozilla.org/security/pkcs11moduledb;1"].getService(Ci.nsIPKCS11ModuleDB);
return mdb.listModules().then(ms => ms.map(m => [m.name, m.libName, m.slots.map(s => s.tokenName)]));"""


def create_profile(home, name, path=None, user=None):
    """Have Firefox itself create a profile (profiles.ini under HOME/.mozilla/firefox) and start it once."""
    path = path or os.path.join(home, ".mozilla", "firefox", name)
    env = dict(os.environ, HOME=home, MOZ_HEADLESS="1")
    cmd = [FIREFOX, "--headless", "-CreateProfile", "%s %s" % (name, path)]
    if user:
        cmd = ["runuser", "-u", user, "--", "env", "HOME=%s" % home] + cmd
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    return path


def start_once(profile, user=None, home=None):
    """Start Firefox headless on a profile until it has written its databases, then quit (makes cert9.db)."""
    env = dict(os.environ, MOZ_HEADLESS="1")
    if home:
        env["HOME"] = home
    shot = os.path.join(profile, "..", os.path.basename(profile) + ".png")
    cmd = [FIREFOX, "--headless", "--no-remote", "-profile", profile, "--screenshot", shot, "about:blank"]
    if user:
        cmd = ["runuser", "-u", user, "--", "env", "HOME=%s" % (home or "")] + cmd
    subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    if os.path.exists(shot):
        os.unlink(shot)


class SeatFirefox(Firefox):
    """Real Firefox ESR in a VM of lab/vm.py, started by the seat agent inside the seat user's logind session (seat0,
    active) on her X display (Xvfb :0, not headless), and driven from here over Marionette through an SSH local
    forward (host 127.0.0.1:port -> guest 127.0.0.1:port; the guest has no other way in). `profile` is the path in the
    guest; the forward's and Firefox's logs stay here and in the guest's /tmp."""

    socket_timeout = 240  # TCG: a page load with a token login takes tens of seconds

    def __init__(self, m, profile, user, log, extra_prefs=None):
        self.m = m
        self.pidfile = None
        super().__init__(profile, user=user, extra_prefs=extra_prefs, binary="firefox-esr", log=log)

    def _ssh(self, script, user=None, input_text=None, check=True):
        from lab import vm as vmlab

        return vmlab.ssh(self.m, script, user=user or self.user, input_text=input_text, check=check, timeout=120)

    def _append_prefs(self, text):
        self._ssh('cat >> "%s/user.js"' % self.profile, input_text=text)
        # a Firefox that did not end cleanly leaves its lock behind: the profile would be "already in use"
        self._ssh('rm -f "%s/lock" "%s/.parentlock"' % (self.profile, self.profile))

    def __enter__(self):
        from lab import vm as vmlab

        self.pidfile = "/tmp/tokentrust-firefox-%d.pid" % self.port
        started = vmlab.seat_run(self.m, (
            'setsid sh -c \'echo $$ > "$1"; exec firefox-esr --no-remote --marionette -remote-allow-system-access '
            '-profile "$2" about:blank\' sh %s "%s" </dev/null >/tmp/tokentrust-firefox-%d.log 2>&1 &\n'
            'echo "$DISPLAY"' % (self.pidfile, self.profile, self.port)), timeout=120)
        assert started.returncode == 0 and started.stdout.strip() == ":0", started.stdout
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([*vmlab.ssh_args(self.m), "-N", "-o", "ExitOnForwardFailure=yes",
                                      "-L", "127.0.0.1:%d:127.0.0.1:%d" % (self.port, self.port),
                                      "%s@127.0.0.1" % vmlab.ADMIN], stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300  # Firefox's first start under TCG
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the SSH forward to the guest's Marionette port exited: see %s" % self.log)
            up = self._ssh("timeout 2 bash -c '</dev/tcp/127.0.0.1/%d' && echo up || true" % self.port).stdout
            if "up" in up:
                break
            if time.time() > deadline:
                out = self._ssh("tail -c 2000 /tmp/tokentrust-firefox-%d.log" % self.port, check=False).stdout
                raise RuntimeError("Firefox in the seat session opened no Marionette port in 300 s: %s" % out)
            time.sleep(2)
        self.client = Marionette(host="127.0.0.1", port=self.port, socket_timeout=self.socket_timeout)
        self.client.start_session({"acceptInsecureCerts": False})
        return self

    def session_of_firefox(self):
        """The audit session id of the Firefox we started (its /proc/<pid>/sessionid in the guest)."""
        return self._ssh('cat /proc/"$(cat %s)"/sessionid' % self.pidfile).stdout.strip()

    def _signal(self, sig):
        self._ssh('kill -%d "$(cat "%s")"' % (int(sig), self.pidfile), check=False)

    def quit(self):
        if self.client is not None:
            try:
                self.client.quit(in_app=True)
            except Exception:  # noqa: BLE001 - fall back to a signal below
                self._signal(signal.SIGTERM)
            self.client = None
        gone = self._ssh('for i in $(seq 30); do kill -0 "$(cat "%s")" 2>/dev/null || { echo gone; exit 0; }; '
                         'sleep 1; done; kill -9 "$(cat "%s")"' % (self.pidfile, self.pidfile), check=False).stdout
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
            self.proc = None
        self._logf.close()
        return "gone" in gone
