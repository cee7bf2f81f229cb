# SPDX-License-Identifier: MPL-2.0
"""pipelines/whip-transform.sh end to end: the script runs the WHIP -> i2itransform -> WHEP
pipeline, GStreamer's whipclientsink publishes a test picture to it, headless Chromium plays
the WHEP output at the transform's size, and SIGINT (Ctrl-C) ends it cleanly: the pipeline
drains (gst-launch-1.0 -e) and the script exits 0. A bad option is refused before anything
starts. All on 127.0.0.1.
"""

import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest

from i2i_web_helpers import ROOT, env, free_port, stop_process, wait_for
from webrtc_helpers import Pages, chrome, decoded, view

SCRIPT = ROOT / "pipelines" / "whip-transform.sh"
OUT_W, OUT_H = 256, 192


def listening(url):
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="OPTIONS"), timeout=2)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def test_bad_option_is_refused():
    r = subprocess.run(["bash", str(SCRIPT), "--codec", "av1"], env=env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2, r
    assert "--codec: expected vp8, h264 or per-viewer, found 'av1'" in r.stderr, r.stderr


def test_script_publish_watch_and_sigint():
    if shutil.which("gst-launch-1.0") is None:
        pytest.skip("gst-launch-1.0 not installed (apt install gstreamer1.0-tools)")
    if not (ROOT / "models" / "demo").exists():
        pytest.skip("models/demo missing (python scripts/make_models.py --out models)")
    tmp = tempfile.mkdtemp(prefix="i2i-whip-script-")
    whip_port, whep_port = free_port(), free_port()
    whip = f"http://127.0.0.1:{whip_port}/whip/endpoint"
    whep = f"http://127.0.0.1:{whep_port}/whep/endpoint"
    log = open(f"{tmp}/script.log", "w")
    script = subprocess.Popen(
        ["bash", str(SCRIPT), "--whip-port", str(whip_port), "--whep-port", str(whep_port),
         "--size", f"{OUT_W}x{OUT_H}"], env=env(), stdout=log, stderr=subprocess.STDOUT)
    pages = Pages(tmp)
    publisher = viewer = None

    def output():
        return open(f"{tmp}/script.log").read()

    try:
        wait_for(lambda: listening(whip) or script.poll() is not None, 60, "the WHIP endpoint")
        assert script.poll() is None, output()[-3000:]
        assert f"publish to {whip}" in output(), output()[-2000:]
        publisher = subprocess.Popen(
            ["gst-launch-1.0", "videotestsrc", "is-live=true", "pattern=ball", "!",
             "video/x-raw,width=320,height=240,framerate=15/1", "!", "videoconvert", "!",
             "whipclientsink", f"signaller::whip-endpoint={whip}"],
            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        viewer = chrome(f"{tmp}/view")
        t = view(viewer, pages, whep)
        assert t["status"] == 201, (t, output()[-3000:])
        s = decoded(viewer, what=f"decoded frames from the script's WHEP: {output()[-2000:]}")
        assert (s["width"], s["height"]) == (OUT_W, OUT_H), s

        # Ctrl-C: gst-launch-1.0 -e (exec'd by the script, same process) drains and exits 0.
        script.send_signal(signal.SIGINT)
        rc = script.wait(timeout=60)
        text = output()
        assert rc == 0, text[-3000:]
        assert "Got EOS from element" in text and "Execution ended" in text, text[-3000:]
        # The publisher's stream stops at the EOS (nothing pushed after it).
        assert "CRITICAL" not in text, text[-3000:]
        assert not listening(whep), "the WHEP endpoint still answers after the script ended"
    finally:
        if viewer is not None:
            viewer.quit()
        if publisher is not None:
            stop_process(publisher)
        if script.poll() is None:
            script.kill()
            script.wait()
        log.close()
        pages.stop()
