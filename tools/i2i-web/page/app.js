// The i2i control room: sends the camera or a screen share to i2i-web as JPEG frames
// (msgpack [timestamp_ms, index, jpg], the elements' own format), shows the transformed
// frames that come back, and passes the controls to the settings holder. No build step,
// no libraries: it is embedded in i2i-web as it is.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const tokenQuery = params.get("token") ? "&token=" + encodeURIComponent(params.get("token")) : "";
if (tokenQuery) $("mjpeg").href = "stream.mjpg?" + tokenQuery.slice(1);

// Numbers the page shows, also read by the browser test.
const i2i = window.i2i = {
  shown: 0, sent: 0, skipped: 0, dropped: 0, latencyMs: null, answers: [], errors: [],
  connected: false, outFps: 0, inFps: 0,
};

// ---- msgpack [timestamp, index, bin]: the only message shape needed here ----
function readFrame(buf) {
  const d = new DataView(buf);
  let p = 0;
  if (d.getUint8(p++) !== 0x93) throw new Error("not a 3-element msgpack array");
  const num = () => {
    const t = d.getUint8(p++);
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 256;
    let v;
    switch (t) {
      case 0xcc: v = d.getUint8(p); p += 1; return v;
      case 0xcd: v = d.getUint16(p); p += 2; return v;
      case 0xce: v = d.getUint32(p); p += 4; return v;
      case 0xcf: v = Number(d.getBigUint64(p)); p += 8; return v;
      case 0xd0: v = d.getInt8(p); p += 1; return v;
      case 0xd1: v = d.getInt16(p); p += 2; return v;
      case 0xd2: v = d.getInt32(p); p += 4; return v;
      case 0xd3: v = Number(d.getBigInt64(p)); p += 8; return v;
      case 0xcb: v = d.getFloat64(p); p += 8; return v;
      default: throw new Error("unexpected msgpack type 0x" + t.toString(16));
    }
  };
  const timestamp = num(), index = num();
  const t = d.getUint8(p++);
  let len;
  if (t === 0xc4) { len = d.getUint8(p); p += 1; }
  else if (t === 0xc5) { len = d.getUint16(p); p += 2; }
  else if (t === 0xc6) { len = d.getUint32(p); p += 4; }
  else throw new Error("expected msgpack bin");
  return { timestamp, index, jpeg: new Uint8Array(buf, p, len) };
}

function writeFrame(timestampMs, index, jpeg) {
  const out = new Uint8Array(1 + 9 + 5 + 5 + jpeg.length);
  const d = new DataView(out.buffer);
  let p = 0;
  d.setUint8(p++, 0x93);
  d.setUint8(p++, 0xcb); d.setFloat64(p, timestampMs); p += 8;
  d.setUint8(p++, 0xce); d.setUint32(p, index >>> 0); p += 4;
  d.setUint8(p++, 0xc6); d.setUint32(p, jpeg.length); p += 4;
  out.set(jpeg, p); p += jpeg.length;
  return out.subarray(0, p);
}

// ---- connection ----
let ws = null;
let nextId = 1;
const pending = new Map();

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/ws?output=binary&relay=0${tokenQuery}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    i2i.connected = true;
    $("conn").textContent = "connected"; $("conn").className = "badge on";
    command({ type: "control", command: "/status" }, loadState);
  };
  ws.onclose = (e) => {
    i2i.connected = false;
    $("conn").textContent = "disconnected"; $("conn").className = "badge off";
    status(`connection closed (${e.code}${e.reason ? ": " + e.reason : ""}); retrying`, true);
    setTimeout(connect, 1000);
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return showFrame(e.data);
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    if (m.type === "stats") { i2i.dropped = m.dropped + i2i.skipped; }
    else if (m.type === "control") {
      const done = pending.get(m.id); pending.delete(m.id);
      if (m.ok) { i2i.answers.push(m.answer); status(m.answer.length > 300 ? m.answer.slice(0, 300) + "…" : m.answer); }
      else { i2i.errors.push(m.error); status("refused: " + m.error, true); }
      if (done) done(m);
    } else if (m.type === "error") { i2i.errors.push(m.error); status(m.error, true); }
  };
}

function command(msg, done) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return status("not connected", true);
  msg.id = nextId++;
  if (done) pending.set(msg.id, done);
  ws.send(JSON.stringify(msg));
}
const settings = (s) => command({ type: "settings", settings: s });

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// ---- output ----
let lastUrl = null;
const shownTimes = [];
function showFrame(buf) {
  // While the output plays over WHEP, the header counts the video's frames instead.
  if (i2i.webrtc.whep === "playing") return;
  let f;
  try { f = readFrame(buf); } catch (e) { status("bad frame from the server: " + e.message, true); return; }
  const url = URL.createObjectURL(new Blob([f.jpeg], { type: "image/jpeg" }));
  const img = $("output");
  img.onload = () => { if (lastUrl && lastUrl !== url) URL.revokeObjectURL(lastUrl); lastUrl = url; };
  img.src = url;
  i2i.shown++;
  const now = Date.now();
  // The timestamp is the page's own clock when it sent the frame (kept by every element
  // on the way), so this is the whole round trip; frames from other producers differ.
  if (f.timestamp > 1e12 && f.timestamp <= now + 1000) i2i.latencyMs = now - f.timestamp;
  shownTimes.push(performance.now());
}

// ---- WebRTC (?whip=URL&whep=URL[&webrtc-token=T]): camera over WHIP to i2iwhipsrc, output over
// WHEP from i2iwhepsink (docs/webrtc.md), with the endpoints' bearer token when they have one; the
// WebSocket path stays the fallback when either fails ----
const whipUrl = params.get("whip"), whepUrl = params.get("whep");
const webrtcToken = params.get("webrtc-token");
const bearer = webrtcToken ? { Authorization: `Bearer ${webrtcToken}` } : {};
i2i.webrtc = { whip: null, whep: null };
let whipPc = null, whipResource = null;
async function offerAnswer(url, pc) {
  await pc.setLocalDescription(await pc.createOffer());
  // No trickle ICE: the offer carries its candidates.
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
    setTimeout(done, 3000);
  });
  const res = await fetch(url, { method: "POST",
                                 headers: { "Content-Type": "application/sdp", ...bearer },
                                 body: pc.localDescription.sdp });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`${res.status}: ${text.trim()}`);
  await pc.setRemoteDescription({ type: "answer", sdp: text });
  const loc = res.headers.get("Location");
  return loc ? new URL(loc, url).href : null;
}
async function publishWhip(media) {
  try {
    whipPc = new RTCPeerConnection();
    whipPc.addTransceiver(media.getVideoTracks()[0], { direction: "sendonly" });
    whipResource = await offerAnswer(whipUrl, whipPc);
    i2i.webrtc.whip = "publishing";
    status("camera published over WHIP");
    return true;
  } catch (e) {
    i2i.webrtc.whip = "failed: " + e.message;
    status(`WHIP failed (${e.message}); sending over the WebSocket instead`, true);
    endWhip();
    return false;
  }
}
function endWhip() {
  if (whipResource) fetch(whipResource, { method: "DELETE", headers: bearer }).catch(() => {});
  if (whipPc) whipPc.close();
  whipPc = null; whipResource = null;
}
async function viewWhep() {
  for (let attempt = 0; attempt < 30; attempt++) {
    const pc = new RTCPeerConnection();
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (e) => {
      $("output-video").srcObject = new MediaStream([e.track]);
      $("output-video").hidden = false; $("output").hidden = true;
      countVideoFrames($("output-video"));
    };
    try {
      await offerAnswer(whepUrl, pc);
      i2i.webrtc.whep = "playing";
      window.i2iWhepPc = pc;
      return;
    } catch (e) {
      pc.close();
      i2i.webrtc.whep = "waiting: " + e.message;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  status("WHEP output unavailable; showing the WebSocket output", true);
}
if (whepUrl) viewWhep();

// ---- input ----
let stream = null, timer = null, index = 0, encoding = false;
const sentTimes = [];
async function start() {
  try {
    stream = $("source").value === "screen"
      ? await navigator.mediaDevices.getDisplayMedia({ video: true })
      : await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    const insecure = !window.isSecureContext ? " (the browser gives the camera only to https:// or http://localhost pages: see docs/web.md)" : "";
    return status(`no ${$("source").value}: ${e.message}${insecure}`, true);
  }
  $("input").srcObject = stream;
  $("start").disabled = true; $("stop").disabled = false;
  if (whipUrl && await publishWhip(stream)) return;
  const fps = Number($("sendfps").value);
  timer = setInterval(sendFrame, 1000 / fps);
}
function stop() {
  clearInterval(timer); timer = null;
  endWhip();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("start").disabled = false; $("stop").disabled = true;
}
function sendFrame() {
  const v = $("input");
  if (!v.videoWidth || !ws || ws.readyState !== WebSocket.OPEN) return;
  // Never queue behind a slow link: skip this frame (and count it) instead.
  if (encoding || ws.bufferedAmount > 256 * 1024) { i2i.skipped++; return; }
  const size = Number($("size").value);
  const c = $("grab");
  c.width = size; c.height = size;
  // Centre square crop, scaled to the chosen size.
  const s = Math.min(v.videoWidth, v.videoHeight);
  c.getContext("2d").drawImage(v, (v.videoWidth - s) / 2, (v.videoHeight - s) / 2, s, s, 0, 0, size, size);
  encoding = true;
  const t = Date.now();
  c.toBlob(async (blob) => {
    encoding = false;
    if (!blob || ws.readyState !== WebSocket.OPEN) return;
    ws.send(writeFrame(t, index++, new Uint8Array(await blob.arrayBuffer())));
    i2i.sent++;
    sentTimes.push(performance.now());
  }, "image/jpeg", 0.85);
}

// ---- numbers ----
function rate(times) {
  const now = performance.now();
  while (times.length && times[0] < now - 2000) times.shift();
  return times.length / 2;
}

// Over WebRTC the frames never pass through the page's code: the output rate is the WHEP
// video's presented frames (requestVideoFrameCallback, or getVideoPlaybackQuality where
// that is missing), the input rate and the losses come from the peer connections' stats.
let countingVideo = false, lastQuality = null;
function countVideoFrames(video) {
  if (countingVideo) return;
  countingVideo = true;
  if (!("requestVideoFrameCallback" in video)) return;
  const onFrame = () => {
    shownTimes.push(performance.now());
    i2i.shown++;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}
const rtcTotals = { sent: null, at: 0 };
async function webrtcNumbers() {
  const v = $("output-video");
  if (countingVideo && !("requestVideoFrameCallback" in v) && v.getVideoPlaybackQuality) {
    const q = v.getVideoPlaybackQuality(), t = performance.now();
    if (lastQuality) {
      const n = q.totalVideoFrames - q.droppedVideoFrames - lastQuality.shown;
      for (let i = 0; i < n; i++) shownTimes.push(t);
      i2i.shown += Math.max(0, n);
    }
    lastQuality = { shown: q.totalVideoFrames - q.droppedVideoFrames };
  }
  let lost = 0;
  if (window.i2iWhepPc) {
    (await window.i2iWhepPc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") lost += (r.framesDropped || 0);
    });
  }
  if (whipPc) {
    (await whipPc.getStats()).forEach((r) => {
      if (r.type !== "outbound-rtp" || r.kind !== "video") return;
      const t = performance.now();
      if (rtcTotals.sent !== null && t > rtcTotals.at) {
        i2i.inFps = (r.framesSent - rtcTotals.sent) * 1000 / (t - rtcTotals.at);
      }
      rtcTotals.sent = r.framesSent; rtcTotals.at = t;
    });
  } else {
    rtcTotals.sent = null;
  }
  return lost;
}

setInterval(async () => {
  const webrtcIn = i2i.webrtc.whip === "publishing", webrtcOut = i2i.webrtc.whep === "playing";
  let lost = 0;
  if (webrtcIn || webrtcOut) {
    try { lost = await webrtcNumbers(); } catch (e) { /* a peer connection just closed */ }
  }
  i2i.outFps = rate(shownTimes);
  if (!webrtcIn) i2i.inFps = rate(sentTimes);
  $("fps").textContent = i2i.outFps.toFixed(1);
  $("infps").textContent = i2i.inFps.toFixed(1);
  // The capture time travels with JPEG frames only: over WebRTC it is not measured.
  $("latency-label").hidden = webrtcOut;
  $("latency").textContent = i2i.latencyMs === null ? "–" : String(i2i.latencyMs);
  $("dropped").textContent = String(i2i.dropped + lost);
}, 500);

// ---- controls ----
function loadState(m) {
  if (!m.ok) return;
  const at = m.answer.indexOf("{");
  if (at < 0) return;
  let s;
  try { s = JSON.parse(m.answer.slice(at)); } catch { return; }
  if (s.prompt !== undefined) $("prompt").value = s.prompt;
  if (s["negative-prompt"] !== undefined) $("negative").value = s["negative-prompt"];
  if (s.seed !== undefined) $("seed").value = s.seed;
  // The holder's /status gives the strength its t-index list stands for (0..1).
  if (s.strength !== undefined) setSlider("strength", s.strength);
  if (s["guidance-scale"] !== undefined) setSlider("guidance", s["guidance-scale"]);
  if (s.delta !== undefined) setSlider("delta", s.delta);
  if (s["transition-frames"] !== undefined) $("transition").value = s["transition-frames"];
  if (s["blend-mode"]) $("blendmode").value = s["blend-mode"];
  if (s.lora !== undefined) $("lora").value = s.lora;
  if (s["ip-adapter-image"] !== undefined) $("style").value = s["ip-adapter-image"];
  if (Array.isArray(s["ip-adapter-scale"]) && s["ip-adapter-scale"].length) setSlider("ipscale", s["ip-adapter-scale"][0]);
  // The element's default (self) when the holder has none.
  setCfg(s["cfg-type"] || "self");
}
function setSlider(id, v) { $(id).value = v; $(id + "-v").textContent = v; }

function slider(id, send) {
  $(id).addEventListener("input", () => { $(id + "-v").textContent = $(id).value; });
  $(id).addEventListener("change", () => send(Number($(id).value)));
}
// Strength: 0..1, right = stronger; the holder moves its t-index list, spacing kept.
slider("strength", (v) => settings({ strength: v }));
slider("guidance", (v) => settings({ "guidance-scale": v }));
slider("delta", (v) => settings({ delta: v }));
$("blend-w").addEventListener("input", () => { $("blend-w-v").textContent = $("blend-w").value; });

const sendPrompt = () => settings({ prompt: $("prompt").value });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sendPrompt(); }
});
$("prompt").addEventListener("change", sendPrompt);
$("negative").addEventListener("change", () => settings({ "negative-prompt": $("negative").value }));
$("seed").addEventListener("change", () => settings({ seed: Number($("seed").value) }));
$("newseed").addEventListener("click", () => {
  const seed = Math.floor(Math.random() * 2 ** 31);
  $("seed").value = seed;
  settings({ seed });
});
$("transition").addEventListener("change", () => settings({ "transition-frames": Number($("transition").value) }));
$("blendmode").addEventListener("change", () => settings({ "blend-mode": $("blendmode").value }));

// Guidance mode (cfg-type): the negative prompt acts only with full and initialize, so its
// field is shown only then. A refused change puts the selector back.
let cfgShown = "self";
function setCfg(mode) {
  cfgShown = mode;
  $("cfg").value = mode;
  $("negative-label").hidden = !(mode === "full" || mode === "initialize");
}
$("cfg").addEventListener("change", () => {
  const mode = $("cfg").value, before = cfgShown;
  setCfg(mode);
  command({ type: "control", command: "/cfg " + mode }, (m) => { if (!m.ok) setCfg(before); });
});
$("blend-on").addEventListener("click", () => {
  const w = Number($("blend-w").value);
  settings({ "prompt-blend": [[$("prompt").value, 1 - w], [$("blend-b").value, w]] });
});
$("blend-off").addEventListener("click", () => settings({ "prompt-blend": [] }));

// LoRA: one file at the slider's scale, or a whole list as typed (FILE:SCALE,...).
$("lora-scale").addEventListener("input", () => { $("lora-scale-v").textContent = $("lora-scale").value; });
$("lora-on").addEventListener("click", () => {
  const text = $("lora").value.trim();
  const list = text.includes(",") || /:-?[0-9.]+$/.test(text) ? text : text + ":" + $("lora-scale").value;
  settings({ lora: list });
});
$("lora-off").addEventListener("click", () => settings({ lora: "off" }));

// IP-Adapter: a picture on the transform's machine and its scale.
const sendStyle = () => settings({ "ip-adapter-image": $("style").value.trim() });
$("style-on").addEventListener("click", sendStyle);
$("style").addEventListener("keydown", (e) => {
  if (e.key === "Enter") { e.preventDefault(); sendStyle(); }
});
$("style-off").addEventListener("click", () => { $("style").value = ""; settings({ "ip-adapter-image": "" }); });
slider("ipscale", (v) => settings({ "ip-adapter-scale": v }));
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);

connect();
