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
        with open(os.path.join(self.profile, "user.js"), "a") as f:
            for k, v in prefs.items():
                val = ("true" if v else "false") if isinstance(v, bool) else (repr(v) if isinstance(v, int)
                                                                               else '"%s"' % v)
                f.write('user_pref("%s", %s);\n' % (k, val))
        if user:
            subprocess.run(["chown", "%s:" % user, os.path.join(self.profile, "user.js")], check=True)
        self.proc = None
        self.client = None

    def __enter__(self):
        env = dict(os.environ, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1")
        env.pop("DISPLAY", None)
        cmd = [self.binary, "--headless", "--no-remote", "--marionette", "-remote-allow-system-access",
               "-profile", self.profile, "about:blank"]
        if self.user:
            import pwd

            pw = pwd.getpwnam(self.user)
            env["HOME"] = pw.pw_dir
            cmd = ["runuser", "-u", self.user, "--", "env", "HOME=%s" % pw.pw_dir, "MOZ_HEADLESS=1"] + cmd
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
        self.client = Marionette(host="127.0.0.1", port=self.port)
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
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.proc = None
        self._logf.close()

    def __exit__(self, *exc):
        self.quit()
        return False


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
