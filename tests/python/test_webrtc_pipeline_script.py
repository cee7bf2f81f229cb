# SPDX-License-Identifier: MPL-2.0
"""pipelines/whip-transform.sh end to end, as a user runs it: the script starts its settings
holder with --prompt, runs the WHIP -> i2itransform -> WHEP pipeline following that holder,
GStreamer's whipclientsink publishes a test picture with a tone (as OBS sends audio), headless
Chromium plays the WHEP output at the transform's size, a command to the holder (what the
control room sends) is applied by the transform, a second publisher with audio replaces the
first, and SIGINT (Ctrl-C) ends it all within seconds: the pipeline drains (gst-launch-1.0
-e), no GStreamer-CRITICAL, exit 0, and the holder goes with it. A bad option, a holder that
cannot start and a missing bearer token are refused. All on 127.0.0.1.
"""

import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from i2i_web_helpers import ROOT, binary, env, free_port, wait_for
from webrtc_helpers import (Pages, Publisher, chrome, decoded, fake_offer, http, listening,
                            stats, view)

SCRIPT = ROOT / "pipelines" / "whip-transform.sh"
OUT_W, OUT_H = 256, 192


def needs_pipeline():
    if shutil.which("gst-launch-1.0") is None:
        pytest.skip("gst-launch-1.0 not installed (apt install gstreamer1.0-tools)")
    if not (ROOT / "models" / "demo").exists():
        pytest.skip("models/demo missing (python scripts/make_models.py --out models)")


class Script:
    """pipelines/whip-transform.sh on ephemeral ports, its output in a file."""

    def __init__(self, tmp, *args):
        self.whip_port, self.whep_port = free_port(), free_port()
        self.settings_port, self.control_port = free_port(), free_port()
        self.whip = f"http://127.0.0.1:{self.whip_port}/whip/endpoint"
        self.whep = f"http://127.0.0.1:{self.whep_port}/whep/endpoint"
        self.control = f"tcp://127.0.0.1:{self.control_port}"
        self.log_path = f"{tmp}/script.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["bash", str(SCRIPT), "--whip-port", str(self.whip_port),
             "--whep-port", str(self.whep_port), "--settings-port", str(self.settings_port),
             "--control-port", str(self.control_port), "--size", f"{OUT_W}x{OUT_H}", *args],
            env=env(), stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        return open(self.log_path).read()

    def holder(self, *command, report_ms=0, timeout=30):
        """One command to the script's settings holder (as the control room sends it)."""
        return subprocess.run([binary("i2i-prompt"), "--endpoint", self.control,
                               "--state-endpoint", f"tcp://127.0.0.1:{self.settings_port}",
                               "--timeout-ms", "2000", "--report-ms", str(report_ms), *command],
                              env=env(), capture_output=True, text=True, timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_bad_option_is_refused_and_help_says_how_to_watch():
    r = subprocess.run(["bash", str(SCRIPT), "--codec", "av1"], env=env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2, r
    assert "--codec: expected vp8, h264 or per-viewer, found 'av1'" in r.stderr, r.stderr
    r = subprocess.run(["bash", str(SCRIPT), "--help"], env=env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "i2i-web --whip" not in r.stdout, r.stdout
    assert "?whip=http://HOST:8190/whip/endpoint&whep=" in r.stdout, r.stdout
    assert "--prompt TEXT" in r.stdout and "--token TOKEN" in r.stdout, r.stdout


def test_script_publish_watch_steer_replace_and_sigint():
    needs_pipeline()
    tmp = tempfile.mkdtemp(prefix="i2i-whip-script-")
    script = Script(tmp, "--prompt", 'a "red" fox')
    pages = Pages(tmp)
    publishers = []
    viewer = None
    try:
        wait_for(lambda: listening(script.whip) or script.proc.poll() is not None, 60,
                 "the WHIP endpoint")
        assert script.proc.poll() is None, script.output()[-3000:]
        text = script.output()
        assert f"publish to {script.whip}" in text, text[-2000:]
        assert "settings holder on 127.0.0.1" in text, text[-2000:]
        status = script.holder("/status")
        assert status.returncode == 0 and 'a \\"red\\" fox' in status.stdout, status

        publishers.append(Publisher(script.whip, "vp8", audio=True, log=f"{tmp}/pub0.log"))
        viewer = chrome(f"{tmp}/view")
        t = view(viewer, pages, script.whep)
        assert t["status"] == 201, (t, script.output()[-3000:])
        s = decoded(viewer, what=f"decoded frames from the script's WHEP: {script.output()[-2000:]}")
        assert (s["width"], s["height"]) == (OUT_W, OUT_H), s

        # The control room's prompt reaches the transform through the holder.
        steer = script.holder("/prompt a blue fox", report_ms=5000)
        assert steer.returncode == 0 and "applied by i2i@" in steer.stderr, steer

        # A second publisher with audio replaces the first (an OBS reconnect); the first then
        # stops (its DELETE finds its session gone), and the output goes on.
        publishers.append(Publisher(script.whip, "h264", audio=True, log=f"{tmp}/pub1.log"))
        time.sleep(3)
        publishers[0].stop()
        before = stats(viewer, "inbound-rtp")["framesDecoded"]
        wait_for(lambda: stats(viewer, "inbound-rtp")["framesDecoded"] > before + 15, 60,
                 f"frames from the replacing publisher: {script.output()[-2000:]}")

        # Ctrl-C: gst-launch-1.0 -e (exec'd by the script, same process) drains and exits 0.
        start = time.monotonic()
        script.proc.send_signal(signal.SIGINT)
        rc = script.proc.wait(timeout=60)
        took = time.monotonic() - start
        text = script.output()
        print(f"SIGINT to exit with an audio publisher, after a replacement: {took:.2f} s")
        assert rc == 0, text[-3000:]
        assert "Got EOS from element" in text and "Execution ended" in text, text[-3000:]
        assert "CRITICAL" not in text, text[-3000:]
        assert took < 10, (took, text[-2000:])
        assert not listening(script.whep), "the WHEP endpoint still answers after the script ended"
        wait_for(lambda: script.holder("/status").returncode != 0, 15,
                 "the settings holder to end with the script")
    finally:
        if viewer is not None:
            viewer.quit()
        for p in publishers:
            p.stop()
        script.stop()
        pages.stop()


def test_script_stops_when_its_holder_cannot_start():
    needs_pipeline()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    script = subprocess.run(
        ["bash", str(SCRIPT), "--whip-port", str(free_port()), "--whep-port", str(free_port()),
         "--settings-port", str(taken.getsockname()[1]), "--control-port", str(free_port())],
        env=env(), capture_output=True, text=True, timeout=60)
    taken.close()
    assert script.returncode == 2, script
    assert "cannot bind the state socket" in script.stderr, script.stderr
    assert "the settings holder (i2i-prompt serve) could not start" in script.stderr, script.stderr
    assert "publish to" not in script.stderr, "the pipeline started anyway"


def test_script_token_and_origins():
    needs_pipeline()
    tmp = tempfile.mkdtemp(prefix="i2i-whip-script-token-")
    script = Script(tmp, "--token", "tok-123", "--no-settings")
    try:
        wait_for(lambda: listening(script.whip) or script.proc.poll() is not None, 60,
                 "the WHIP endpoint")
        assert script.proc.poll() is None, script.output()[-3000:]
        assert "no settings holder" in script.output()
        status, text, _ = http("POST", script.whip, fake_offer())
        assert status == 401, (status, text)
        status, text, _ = http("POST", script.whip, fake_offer(),
                               headers={"Authorization": "Bearer tok-123"})
        assert status == 201, (status, text)
        # The control room on this machine may use the endpoints from its page; others not.
        _, _, h = http("OPTIONS", script.whep, headers={"Origin": "http://localhost:8765"})
        assert h.get("access-control-allow-origin") == "http://localhost:8765", h
        _, _, h = http("OPTIONS", script.whep, headers={"Origin": "http://localhost:9999"})
        assert "access-control-allow-origin" not in h, h
    finally:
        script.stop()
