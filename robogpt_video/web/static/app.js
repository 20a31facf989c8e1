// robogpt-video dashboard: a grid of live streams and a single-stream view with its
// recordings, and a sign-in form when the server has access control on. Plain DOM, no
// framework, no build step (docs/dashboard.md).
"use strict";

const POLL_MS = 2000;       // /api/streams and the open stream's stats
const HEALTH_MS = 5000;     // /health
const RECORDINGS_MS = 10000;
const ENDED_KEEP_MS = 10000;  // a tile whose stream ended stays this long, saying so
const RECONNECT_MS = [500, 1000, 2000, 4000, 8000];  // the live socket's backoff
// Every live picture comes over ONE WebSocket (/ws/view): an MJPEG <img> per tile
// would hold one of the browser's 6 HTTP/1.1 connections to this server each.
// Setting an <img> to this ends its request (the recording player's).
const BLANK = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw==";
// The sign-in (POST /api/session's answer) is kept under this key in sessionStorage:
// this tab only, gone when the tab closes.
const SESSION_KEY = "robogpt-video.session";

const $ = (id) => document.getElementById(id);
const tiles = new Map();    // stream name -> tile
let openStream = null;      // name shown in the single-stream view, or null
let reviewing = false;      // the recordings page (recordings.js) is shown
let svTimers = [];
let lastSegment = null;     // the open stream's recording file: a new one refreshes the table
let svCreated = null;       // the open stream's created_at; another one means a new stream
let svView = null;          // the open stream's live view (see makeView), once allowed
let session = null;         // {user, token, expires, permissions} once signed in
let authEpoch = 0;          // +1 at every sign-in and sign-out: older answers are dropped
let statusOnlyHealth = false;  // /health left out its details: access control is on
let signedOutNote = null;   // what the sign-in form says after "Sign out"
let dashboardLoops = [];    // stops the grid's poll
let holdTimer = null;       // counts down a 429's Retry-After on the sign-in button

// An error answer as an Error: the server's message, its status and Retry-After.
async function failure(url, response) {
  let message = `${url}: HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && typeof body.message === "string") message = body.message;
  } catch { /* not the server's JSON error (e.g. a proxy's page) */ }
  const error = new Error(message);
  error.status = response.status;
  error.retryAfter = response.headers.get("Retry-After");
  return error;
}

// Every API request: the session's token as Bearer, and never credentials the browser
// keeps itself ("omit"): a 401 then reaches this script instead of opening the
// browser's own name-and-password prompt.
async function getJSON(url) {
  const epoch = authEpoch;
  const headers = session ? { Authorization: `Bearer ${session.token}` } : {};
  const response = await fetch(url, { cache: "no-store", credentials: "omit", headers });
  const stale = () => Object.assign(new Error(`${url}: signed in or out meanwhile`), { stale: true });
  if (epoch !== authEpoch) throw stale();
  if (!response.ok) {
    const error = await failure(url, response);
    if (epoch !== authEpoch) throw stale();
    error.epoch = epoch;
    throw error;
  }
  const body = await response.json();
  if (epoch !== authEpoch) throw stale();
  return body;
}

// A URL the browser loads itself (<img>, links): the session's token as ?token=.
function withToken(url) {
  if (!session) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(session.token)}`;
}

function failed(error) {
  if (error.stale) return;
  if (error.status === 401) askToSignIn(error);
  else console.warn(error);
}

function every(ms, task) {
  // setTimeout after each run (not setInterval): a slow server never piles up requests.
  let timer = null;
  let stopped = false;
  const run = async () => {
    try { await task(); } catch (error) { failed(error); }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => { stopped = true; clearTimeout(timer); };
}

const enc = encodeURIComponent;
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const fmt = {
  seconds(s) {
    if (s == null) return "–";
    const nb = "\u00a0";  // number and unit stay on one line
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}${nb}s`;
    if (s < 3600) return `${Math.floor(s / 60)}${nb}min ${Math.round(s % 60)}${nb}s`;
    return `${Math.floor(s / 3600)}${nb}h ${Math.round((s % 3600) / 60)}${nb}min`;
  },
  bytes(n) {
    if (n == null) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)}\u00a0${units[i]}`;
  },
  size(s) { return s.width ? `${s.width}×${s.height}` : "no frame"; },
  time(iso) { return iso ? localTime(Date.parse(iso) / 1000) : "–"; },  // recordings.js
  age(s) { return s < 10 ? `${s.toFixed(1)}\u00a0s` : fmt.seconds(s); },
};

// A stream or file name that may wrap after "_", "-" and ".", never inside a word
// (recordings.js uses it too).
function breakable(name) {
  const span = el("span", { className: "file-name" });
  for (const piece of name.split(/(?<=[_.-])/)) span.append(piece, el("wbr"));
  return span;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// ---- health -------------------------------------------------------------------

async function pollHealth() {
  const badge = $("health-status");
  try {
    const health = await getJSON("/health");
    badge.textContent = health.status;
    badge.className = `badge ${health.status}`;
    // With access control on, an answer to a request without credentials is the
    // status alone.
    statusOnlyHealth = health.version === undefined;
    showAccount();
    const problems = (health.problems || []).map((p) => el("li", { textContent: p }));
    $("health-problems").replaceChildren(...problems);
    $("summary").textContent = statusOnlyHealth ? "" : [
      `${health.active_streams} / ${health.max_streams} streams`,
      health.recording_enabled ? "recording" : "recording off",
    ].join(" · ");
    $("version").textContent = statusOnlyHealth ? "" : ` · v${health.version}`;
  } catch (error) {
    if (error.stale) return;
    if (error.status === 401) return askToSignIn(error);
    badge.textContent = "unreachable";
    badge.className = "badge unreachable";
    const problem = el("li", { textContent: "the server does not answer" });
    $("health-problems").replaceChildren(problem);
  }
}

// ---- live pictures: one WebSocket for every tile and the stream view ----------------
// The page sends the set of streams it shows (one JSON message that replaces the last);
// the server sends each frame as one binary message: header + JPEG (docs/dashboard.md).
// A view is one place a stream is drawn: a tile, or the stream view's player.

const live = {
  ws: null,          // the socket, while open or opening
  sent: null,        // the last subscribe message sent on it
  retry: 0,          // reconnect attempts since the last open
  timer: null,       // the next reconnect
  views: new Map(),  // stream name -> views drawing it (a tile, the stream view)
};

// Four corners (an inline SVG: no icon font to load).
const FULLSCREEN_ICON = '<svg viewBox="0 0 16 16" width="14" height="14" aria-hidden="true" ' +
  'fill="none" stroke="currentColor" stroke-width="2"><path d="M1 5V1h4M11 1h4v4M15 11v4h-4M5 15H1v-4"/></svg>';

function makeView(name, media) {
  const canvas = el("canvas", { width: 4, height: 3 });
  canvas.setAttribute("role", "img");
  const state = el("div", { className: "state" });
  const age = el("span", { className: "age" });
  const fullscreen = el("button", { type: "button", className: "fs" });
  fullscreen.innerHTML = FULLSCREEN_ICON;
  fullscreen.title = "Fullscreen";
  fullscreen.setAttribute("aria-label", `Fullscreen ${name}`);
  fullscreen.addEventListener("click", (event) => {
    event.preventDefault();
    event.stopPropagation();
    if (document.fullscreenElement) document.exitFullscreen();
    else media.requestFullscreen().catch((error) => console.warn(error));
  });
  media.append(canvas, state, age, fullscreen);
  const view = {
    name, media, canvas, state, age, fullscreen,
    frames: 0,          // frames drawn (media.dataset.frames, for tests and curiosity)
    pending: null,      // the newest frame waiting while one is decoded
    decoding: false,
    shownAge: null,     // [age when sent (s), performance.now() when received]
    status: "connecting",
    width: 0,           // the width it asks for (0: as sent)
  };
  setStatus(view, "connecting");
  return view;
}

// What a view shows over its picture: nothing while frames come.
const STATUS_TEXT = {
  connecting: "Connecting…", reconnecting: "Reconnecting…", ended: "Stream ended",
  waiting: "Waiting for a frame…", paused: "",
};

function setStatus(view, status, text) {
  view.status = status;
  view.media.dataset.status = status;
  view.state.textContent = text || STATUS_TEXT[status] || "";
  view.state.hidden = !view.state.textContent;
}

function setAspect(view, width, height) {
  if (width && height) view.canvas.style.aspectRatio = `${width} / ${height}`;
}

function attach(view) {
  let views = live.views.get(view.name);
  if (!views) live.views.set(view.name, views = new Set());
  views.add(view);
}

function detach(view) {
  const views = live.views.get(view.name);
  if (views) {
    views.delete(view);
    if (!views.size) live.views.delete(view.name);
  }
}

// A view asks for frames no wider than it shows (in device pixels, rounded up to a
// multiple of WIDTH_STEP so that views of about the same size share one resized
// version on the server); a stream no wider than that is sent as it is.
const WIDTH_STEP = 160;

function askedWidth(view) {
  const streamWidth = view.streamWidth || 0;
  const shown = view.canvas.clientWidth * (window.devicePixelRatio || 1);
  const width = Math.ceil(shown / WIDTH_STEP) * WIDTH_STEP;
  return width > 0 && streamWidth > width ? width : 0;
}

// The views that want frames now: none while the tab is hidden; else the stream
// view's player, or the grid's tiles that are on screen and whose stream is live.
function wantedViews() {
  if (document.hidden || reviewing || !$("signin").hidden) return [];
  if (openStream !== null) return svView && svView.status !== "ended" ? [svView] : [];
  return [...tiles.values()]
    .filter((tile) => tile.onscreen && tile.view.status !== "ended")
    .map((tile) => tile.view);
}

// Send the set of wanted streams when it changed; open the socket if needed.
function syncLive() {
  const wanted = wantedViews();
  for (const tile of tiles.values()) {
    if (!wanted.includes(tile.view) && tile.view.status !== "ended") setStatus(tile.view, "paused");
  }
  const streams = wanted.map((view) => {
    const entry = { name: view.name };
    if (view.width) entry.width = view.width;
    return entry;
  });
  const message = JSON.stringify({ type: "subscribe", streams });
  if (!live.ws) {
    if (streams.length && live.timer === null) connectLive();
    return;
  }
  if (live.ws.readyState !== WebSocket.OPEN || message === live.sent) return;
  live.ws.send(message);
  live.sent = message;
  for (const view of wanted) if (view.status === "paused") setStatus(view, "waiting");
}

function connectLive() {
  live.timer = null;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}${withToken("/ws/view")}`);
  ws.binaryType = "arraybuffer";
  live.ws = ws;
  live.sent = null;
  ws.onopen = () => {
    live.retry = 0;
    syncLive();
  };
  ws.onmessage = (event) => {
    if (ws !== live.ws) return;
    if (typeof event.data === "string") liveNotice(JSON.parse(event.data));
    else liveFrame(event.data);
  };
  ws.onclose = () => {
    if (ws !== live.ws) return;  // closed on purpose (closeLive)
    live.ws = null;
    live.sent = null;
    for (const views of live.views.values()) {
      for (const view of views) if (view.status !== "ended") setStatus(view, "reconnecting");
    }
    // The server restarted or this node went away: try again, less and less often.
    const delay = RECONNECT_MS[Math.min(live.retry, RECONNECT_MS.length - 1)];
    live.retry += 1;
    live.timer = setTimeout(() => { live.timer = null; syncLive(); }, delay);
  };
}

function closeLive() {
  clearTimeout(live.timer);
  live.timer = null;
  const ws = live.ws;
  live.ws = null;
  live.sent = null;
  if (ws) ws.close();
}

// A text message: a stream ended or is not allowed, or a bad message (a bug here).
function liveNotice(notice) {
  const views = notice.stream ? live.views.get(notice.stream) : null;
  if (notice.type === "subscribed" || !views) {
    if (notice.type === "error") console.warn("live socket:", notice.message);
    return;
  }
  for (const view of views) {
    if (notice.type === "ended") {
      view.pending = null;
      setStatus(view, "ended");
    } else if (notice.type === "forbidden") {
      setStatus(view, "forbidden", `Not allowed: ${notice.message}`);
    } else {
      setStatus(view, "error", notice.message);
    }
  }
  live.sent = null;  // the server dropped it from the set: send the set again when asked
}

// A binary message: version, name length, name, then float64 sequence, float64 arrival
// time, float32 age when sent, uint16 width and height (big-endian), then the JPEG.
function liveFrame(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes[0] !== 1) return;
  const length = bytes[1];
  const name = String.fromCharCode(...bytes.subarray(2, 2 + length));
  const views = live.views.get(name);
  if (!views) return;
  const data = new DataView(buffer, 2 + length);
  const frame = {
    seq: data.getFloat64(0), age: data.getFloat32(16), received: performance.now(),
    width: data.getUint16(20), height: data.getUint16(22),
    jpeg: new Blob([bytes.subarray(2 + length + 24)], { type: "image/jpeg" }),
  };
  for (const view of views) draw(view, frame);
}

// One decode at a time per view; a frame that comes meanwhile replaces the waiting
// one (newest wins). Each bitmap is closed once drawn: nothing piles up.
function draw(view, frame) {
  if (view.decoding) {
    view.pending = frame;
    return;
  }
  view.decoding = true;
  createImageBitmap(frame.jpeg).then((bitmap) => {
    const { canvas } = view;
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    setAspect(view, frame.width, frame.height);
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    view.frames += 1;
    view.media.dataset.frames = view.frames;
    view.shownAge = [frame.age, frame.received];
    if (view.status !== "ended" && view.status !== "live") setStatus(view, "live");
  }).catch((error) => console.warn(`${view.name}: a frame did not decode`, error))
    .finally(() => {
      view.decoding = false;
      const next = view.pending;
      view.pending = null;
      if (next && view.status !== "ended") draw(view, next);
    });
}

// Frame age (the server's age when it sent the frame plus the time since it came: no
// clock of the browser is compared with the server's).
function showAges() {
  const now = performance.now();
  for (const views of live.views.values()) {
    for (const view of views) {
      if (!view.shownAge) continue;
      const age = view.shownAge[0] + (now - view.shownAge[1]) / 1000;
      view.age.textContent = `frame ${fmt.age(age)} old`;
      view.age.classList.toggle("old", age >= 2);
    }
  }
}

// ---- grid ---------------------------------------------------------------------

function makeTile(name) {
  const media = el("div", { className: "media" });
  const rec = el("span", { className: "rec", textContent: "REC", title: "recording to disk" });
  const meta = el("div", { className: "meta" });
  const caption = el("div", { className: "caption" },
    el("div", { className: "name" }, rec, breakable(name)), meta);
  const link = el("a", { className: "tile", href: `#/stream/${enc(name)}` }, media, caption);
  const li = el("li", {}, link);
  li.dataset.stream = name;
  const view = makeView(name, media);
  view.canvas.setAttribute("aria-label", `Live view of ${name}`);
  // The fullscreen button is not part of the link (a click would open the stream).
  li.append(view.fullscreen);
  attach(view);
  const tile = { name, view, meta, rec, link, li, onscreen: false };
  tile.created = null;  // the stream's created_at: another one means a new stream, same name
  tile.endedAt = null;  // when the server stopped listing it
  return tile;
}

const onscreen = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const tile = tiles.get(entry.target.dataset.stream);
    if (tile) tile.onscreen = entry.isIntersecting;
  }
  syncLive();
});

function updateTile(tile, s) {
  const idle = s.inactive_seconds >= 2;
  tile.link.classList.toggle("idle", idle);
  tile.rec.hidden = !s.is_recording;
  setAspect(tile.view, s.width, s.height);
  tile.view.streamWidth = s.width || 0;
  tile.view.width = askedWidth(tile.view);
  tile.meta.replaceChildren(
    `${s.fps.toFixed(1)} fps · ${fmt.size(s)} · ${plural(s.viewer_count, "viewer")} · `,
    el("span", {
      className: "inactive", textContent: `inactive ${fmt.seconds(s.inactive_seconds)}`,
    }),
  );
}

function removeTile(tile) {
  detach(tile.view);
  onscreen.unobserve(tile.li);
  tile.li.remove();
  tiles.delete(tile.name);
}

async function pollStreams() {
  const { streams } = await getJSON("/api/streams");
  signedOutNote = null;  // streams without signing in: a later 401 is not about "Sign out"
  const names = new Set(streams.map((s) => s.name));
  const now = Date.now();
  for (const tile of [...tiles.values()]) {
    if (names.has(tile.name)) continue;
    // Gone from the server: the tile says so for a while, then goes.
    if (tile.endedAt === null) {
      tile.endedAt = now;
      setStatus(tile.view, "ended");
      tile.meta.textContent = "ended";
    } else if (now - tile.endedAt >= ENDED_KEEP_MS) removeTile(tile);
  }
  const grid = $("grid");
  for (const s of streams) {
    let tile = tiles.get(s.name);
    if (!tile) {
      tile = makeTile(s.name);
      tiles.set(s.name, tile);
      // Keep name order by inserting before the first larger name; existing tiles never move.
      const after = [...grid.children].find((li) => li.dataset.stream > s.name);
      grid.insertBefore(tile.li, after || null);
      onscreen.observe(tile.li);
    }
    updateTile(tile, s);
    tile.endedAt = null;
    if (tile.view.status === "ended" && tile.created !== s.created_at) {
      setStatus(tile.view, "waiting");  // created again under the same name
    }
    tile.created = s.created_at;
  }
  // The header counts what the tiles count: every viewer of every listed stream.
  const viewers = streams.reduce((sum, s) => sum + s.viewer_count, 0);
  $("viewers").textContent = `${plural(viewers, "viewer")} (all streams)`;
  $("empty").hidden = tiles.size > 0;
  syncLive();
}

// ---- single-stream view ---------------------------------------------------------

function showStats(stats) {
  const rows = [
    ["Resolution", fmt.size(stats)], ["FPS", stats.fps.toFixed(2)],
    ["Viewers", stats.viewer_count], ["Inactive", fmt.seconds(stats.inactive_seconds)],
    ["Uptime", fmt.seconds(stats.uptime_seconds)], ["Frames", stats.total_frames],
    ["Received", fmt.bytes(stats.bytes_in)], ["Last frame", fmt.bytes(stats.last_frame_size)],
    ["Buffer", `${stats.buffer_size} / ${stats.max_buffer_frames}`],
    ["Skipped for slow viewers", stats.frames_dropped_slow_viewers],
    ["Created", fmt.time(stats.created_at)], ["Last frame at", fmt.time(stats.last_frame_time)],
  ];
  const rec = stats.recording;
  if (!rec) rows.push(["Recording", "not recording"]);
  else {
    rows.push(["Recording to", rec.segment ? breakable(rec.segment.split("/").pop()) : "no open file"]);
    rows.push(["Recorded", `${rec.frames_written} frames, ${fmt.bytes(rec.bytes_written)}`]);
    const notRecorded = `${rec.frames_dropped} dropped, ${rec.frames_skipped_fps} above fps cap`;
    rows.push(["Not recorded", notRecorded]);
    if (rec.error) rows.push(["Recording error", rec.error]);
  }
  const items = rows.flatMap(([key, value]) => [
    el("dt", { textContent: key }),
    value instanceof Node ? el("dd", {}, value) : el("dd", { textContent: value }),
  ]);
  $("sv-stats").replaceChildren(...items);
}

// The open stream's live player: a view on the same socket as the tiles.
function showLive(name) {
  if (!svView) {
    const media = $("sv-media");
    media.replaceChildren();
    svView = makeView(name, media);
    svView.canvas.setAttribute("aria-label", `Live video of ${name}`);
    attach(svView);
  }
  mediaVisible(true);
  syncLive();
}

function mediaVisible(shown) {
  $("sv-media").hidden = !shown;
  $("sv-state").hidden = !shown;
  $("sv-side").hidden = !shown;
  $("sv-denied").hidden = shown;
}

function dropLive() {
  if (svView) detach(svView);
  svView = null;
  $("sv-media").replaceChildren();
}

// 403: the video's place says so (no picture asked for); a later allowed answer shows it.
function denyView(name, error) {
  dropLive();
  svCreated = "denied";
  mediaVisible(false);
  const denied = $("sv-denied");
  denied.textContent = `Not allowed: you may not watch ${name} (${error.message}).`;
  $("sv-state").textContent = "";
  $("sv-stats").replaceChildren();
  syncLive();
}

async function pollStats(name) {
  let stats;
  try {
    stats = await getJSON(`/api/streams/${enc(name)}/stats`);
  } catch (error) {
    if (openStream !== name) throw error;
    if (error.status === 403) return denyView(name, error);
    if (error.status !== 404) throw error;
    svCreated = "gone";  // a new stream of this name, when it comes, is shown afresh
    if (svView) setStatus(svView, "ended");
    $("sv-state").textContent = "Not live: the stream ended or has not started.";
    $("sv-stats").replaceChildren();
    syncLive();
    return;
  }
  if (openStream !== name) return;  // the view changed while we waited
  if (!svView) showLive(name);  // allowed now (see openView)
  if (svCreated !== null && svCreated !== stats.created_at && svView.status === "ended") {
    setStatus(svView, "waiting");  // ended and created again
  }
  svCreated = stats.created_at;
  setAspect(svView, stats.width, stats.height);
  svView.streamWidth = stats.width || 0;
  svView.width = askedWidth(svView);
  showStats(stats);
  $("sv-state").textContent = stats.inactive_seconds >= 2 ? "Live (no new frame)" : "Live";
  $("sv-rec").hidden = !stats.is_recording;
  syncLive();
  const segment = stats.recording && stats.recording.segment;
  if (segment && lastSegment !== null && segment !== lastSegment) {
    pollRecordings(name).catch(failed);  // a segment just closed: list it now
  }
  lastSegment = segment || lastSegment;
}

function play(rec) {
  $("player").hidden = false;
  $("player-title").textContent = `Replay of ${rec.file} (recorded timing)`;
  const img = $("player-img");
  img.alt = `Replay of recording ${rec.file}`;
  img.src = withToken(`${rec.play_url}?t=${Date.now()}`);  // a fresh request replays from the start
  $("player").scrollIntoView({ block: "nearest" });
}

function closePlayer() {
  $("player-img").src = BLANK;
  $("player").hidden = true;
}

function recordingRow(rec) {
  const playButton = el("button", { type: "button", textContent: "Play" });
  playButton.setAttribute("aria-label", `Play recording ${rec.file}`);
  playButton.addEventListener("click", () => play(rec));
  const download = el("a", { className: "button", href: withToken(rec.download_url) });
  download.textContent = "Download";
  download.setAttribute("download", rec.file);
  download.setAttribute("aria-label", `Download ${rec.file}`);
  const duration = rec.open
    ? `${fmt.seconds((Date.now() - Date.parse(rec.start_time)) / 1000)} so far`
    : fmt.seconds(rec.duration_seconds);
  // "recording" but no longer open: closed a moment ago, its final sidecar is on the way.
  let status = rec.status;
  if (status === "recording") status = rec.open ? "recording (being written)" : "closing";
  const row = el("tr", {},
    el("td", { textContent: fmt.time(rec.start_time) }), el("td", { textContent: duration }),
    el("td", { textContent: fmt.bytes(rec.size_bytes) }), el("td", { textContent: status }),
    el("td", { className: "actions" }, playButton, " ", download));
  row.dataset.file = rec.file;
  row.dataset.status = rec.status;
  return row;
}

async function pollRecordings(name) {
  let recordings;
  try {
    ({ recordings } = await getJSON(`/api/recordings?stream=${enc(name)}`));
  } catch (error) {
    if (error.status !== 403 || openStream !== name) throw error;
    $("recordings").hidden = true;
    $("rec-empty").textContent = `Not allowed: you may not play back recordings (${error.message}).`;
    $("rec-empty").hidden = false;
    return;
  }
  if (openStream !== name) return;
  $("recordings").tBodies[0].replaceChildren(...recordings.map(recordingRow));
  $("recordings").hidden = recordings.length === 0;
  $("rec-empty").textContent = "No recordings of this stream on disk.";
  $("rec-empty").hidden = recordings.length > 0;
}

function openView(name) {
  openStream = name;
  $("grid-view").hidden = true;
  $("stream-view").hidden = false;
  $("sv-name").textContent = name;
  document.title = `${name} · robogpt-video`;
  $("sv-snapshot").href = withToken(`/snapshot/${enc(name)}`);
  $("sv-mjpeg").href = withToken(`/stream/${enc(name)}`);
  $("sv-review").href = `#/recordings?stream=${enc(name)}`;
  $("sv-state").textContent = "";
  $("sv-rec").hidden = true;
  lastSegment = null;
  svCreated = null;
  dropLive();
  mediaVisible(true);
  // A stream of the grid may be watched (the server lists only those): live at once.
  // Any other waits for its statistics, so nothing is asked for without permission.
  if (tiles.has(name)) showLive(name);
  else syncLive();
  svTimers = [
    every(POLL_MS, () => pollStats(name)),
    every(RECORDINGS_MS, () => pollRecordings(name)),
  ];
}

function closeView() {
  svTimers.forEach((stop) => stop());
  svTimers = [];
  dropLive();
  closePlayer();
  openStream = null;
  $("stream-view").hidden = true;
  $("grid-view").hidden = false;
  document.title = "robogpt-video";
  syncLive();
}

function route() {
  if (!$("signin").hidden) return;  // the views open once signed in
  const reviewMatch = location.hash.match(/^#\/recordings(?:\?(.*))?$/);
  if (reviewMatch) {
    if (openStream !== null) closeView();
    reviewing = true;
    $("grid-view").hidden = true;
    syncLive();  // the tiles let go of their streams
    return openRecordings(new URLSearchParams(reviewMatch[1] || ""));
  }
  if (reviewing) {
    reviewing = false;
    closeRecordings();
    $("grid-view").hidden = false;
    syncLive();
  }
  const match = location.hash.match(/^#\/stream\/([^/]+)$/);
  const name = match ? decodeURIComponent(match[1]) : null;
  if (name === openStream) return;
  if (openStream !== null) closeView();
  if (name !== null) openView(name);
}

// ---- signing in -------------------------------------------------------------------
// Only with access control on (docs/security.md): the first 401 shows the form; its
// answer (POST /api/session) is kept in sessionStorage and its token sent with every
// request (getJSON, withToken). Without access control no answer is a 401: no form.

function readSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY));
    return saved && typeof saved.token === "string" ? saved : null;
  } catch {
    return null;  // nothing kept, or storage is off
  }
}

function keepSession(answer) {
  session = {
    user: answer.user, token: answer.token, expires: answer.expires,
    permissions: answer.permissions,
  };
  authEpoch += 1;
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  } catch { /* storage is off: the sign-in lasts as long as this page */ }
  showAccount();
}

function forgetSession() {
  session = null;
  authEpoch += 1;
  try {
    sessionStorage.removeItem(SESSION_KEY);
  } catch { /* storage is off */ }
  // What only signed-in users are told (/health's details) goes with the session.
  $("summary").textContent = "";
  $("version").textContent = "";
  showAccount();
}

// The header says who is signed in; links the browser follows itself carry the token.
function showAccount() {
  $("account").hidden = session === null;
  $("account-user").textContent = session ? session.user : "";
  $("account-user").title = session
    ? (session.permissions || []).map((p) => `${p.action} on ${p.streams}`).join(", ") : "";
  $("signin-open").hidden = session !== null || !statusOnlyHealth || !$("signin").hidden;
  $("link-recordings").href = withToken("/api/recordings");
  $("link-metrics").href = withToken("/metrics");
}

function startDashboard() {
  $("signin").hidden = true;
  $("grid-view").hidden = false;
  document.title = "robogpt-video";
  showAccount();
  route();
  dashboardLoops = [every(POLL_MS, pollStreams)];
}

// Everything that asks the server for streams stops, and the live socket closes (the
// next one carries the next sign-in's token).
function stopDashboard() {
  dashboardLoops.forEach((stop) => stop());
  dashboardLoops = [];
  for (const tile of [...tiles.values()]) removeTile(tile);
  if (openStream !== null) closeView();
  if (reviewing) {
    reviewing = false;
    closeRecordings();
  }
  closeLive();
  $("grid-view").hidden = true;
  $("empty").hidden = true;
  $("viewers").textContent = "";
}

function showSignIn(note, cancellable) {
  stopDashboard();
  $("signin-note").textContent = note;
  $("signin-error").hidden = true;
  $("signin-cancel").hidden = !cancellable;
  $("signin").hidden = false;
  document.title = "Sign in · robogpt-video";
  showAccount();
  ($("signin-name").value ? $("signin-secret") : $("signin-name")).focus();
}

// A 401: no credentials yet, or the session ended (expired, or the server restarted
// and its key with it). Answers to requests made before the last sign-in or sign-out
// are dropped, so the form comes once, and no request carries the old token again.
function askToSignIn(error) {
  if (error.epoch !== authEpoch) return;
  let note = signedOutNote || "This server shows its streams to signed-in users.";
  if (session) note = `Your sign-in has ended (${error.message}).`;
  signedOutNote = null;
  forgetSession();
  showSignIn(note, false);
}

function signOut() {
  forgetSession();
  stopDashboard();
  // Anonymous again: the form comes with the first 401, or the streams anyone may see.
  signedOutNote = "You signed out.";
  startDashboard();
  pollHealth();  // the header as anyone sees it
}

// Basic credentials are base64 of the UTF-8 bytes of "name:password".
const base64 = (text) =>
  btoa(Array.from(new TextEncoder().encode(text), (byte) => String.fromCharCode(byte)).join(""));

function signInError(text) {
  $("signin-error").textContent = text;
  $("signin-error").hidden = false;
}

// 429: the sign-in button waits for the server's Retry-After.
function holdOff(seconds) {
  const button = $("signin-submit");
  let left = Math.max(1, Math.ceil(seconds));
  clearInterval(holdTimer);
  const tick = () => {
    if (left <= 0) {
      clearInterval(holdTimer);
      button.disabled = false;
      button.textContent = "Sign in";
      return;
    }
    button.disabled = true;
    button.textContent = `Try again in ${left} s`;
    left -= 1;
  };
  tick();
  holdTimer = setInterval(tick, 1000);
}

async function submitSignIn(event) {
  event.preventDefault();
  const name = $("signin-name").value.trim();
  const secret = $("signin-secret").value;
  if (!secret.trim()) return signInError(name ? "Enter the password." : "Enter a password or a token.");
  const authorization = name ? `Basic ${base64(`${name}:${secret}`)}` : `Bearer ${secret.trim()}`;
  const button = $("signin-submit");
  button.disabled = true;
  $("signin-error").hidden = true;
  let answer;
  try {
    const response = await fetch("/api/session", {
      method: "POST", cache: "no-store", credentials: "omit",
      headers: { Authorization: authorization },
    });
    if (!response.ok) throw await failure("/api/session", response);
    answer = await response.json();
  } catch (error) {
    button.disabled = false;
    if (!error.status) return signInError("The server does not answer: try again.");
    signInError(`Sign-in refused: ${error.message}`);
    $("signin-secret").select();
    if (error.status === 429 && error.retryAfter) holdOff(Number(error.retryAfter));
    return;
  }
  button.disabled = false;
  $("signin-secret").value = "";
  keepSession(answer);
  startDashboard();
  pollHealth();  // its details, now that the request carries the token
}

document.addEventListener("DOMContentLoaded", () => {
  for (const node of document.querySelectorAll(".origin")) node.textContent = location.origin;
  $("zone").textContent = ` · times in ${zoneName()}`;
  $("player-close").addEventListener("click", closePlayer);
  $("signin-form").addEventListener("submit", submitSignIn);
  $("signout").addEventListener("click", signOut);
  $("signin-open").addEventListener("click", () => showSignIn("Sign in to see the streams of your user.", true));
  $("signin-cancel").addEventListener("click", startDashboard);
  window.addEventListener("hashchange", route);
  // A hidden tab asks for no frame at all; a resized window may ask for other widths.
  document.addEventListener("visibilitychange", syncLive);
  window.addEventListener("resize", () => {
    for (const tile of tiles.values()) tile.view.width = askedWidth(tile.view);
    if (svView) svView.width = askedWidth(svView);
    syncLive();
  });
  setInterval(showAges, 250);
  session = readSession();
  startDashboard();
  every(HEALTH_MS, pollHealth);
});
