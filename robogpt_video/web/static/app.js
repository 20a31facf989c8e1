// robogpt-video dashboard: a grid of live streams and a single-stream view with its
// recordings, and a sign-in form when the server has access control on. Plain DOM, no
// framework, no build step (docs/dashboard.md).
"use strict";

const POLL_MS = 2000;       // /api/streams and the open stream's stats
const HEALTH_MS = 5000;     // /health
const RECORDINGS_MS = 10000;
const SNAPSHOT_MS = 1000;   // a snapshot tile asks for its next JPEG this long after the last
// An MJPEG <img> holds one HTTP connection for as long as it shows. Over HTTP/1.1
// Chrome opens at most 6 connections per host, shared by every tab; a 7th request
// waits until one closes. So live tiles only while few enough leave 2 connections
// for the API, snapshots and navigation. HTTP/2 (e.g. behind the nginx example)
// multiplexes everything on one connection and has no such limit.
const LIVE_TILES_HTTP1 = 4;
const LIVE_TILES_HTTP2 = 64;
// Setting an <img> to this ends its MJPEG request (removing the element may not).
const BLANK = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw==";
// The sign-in (POST /api/session's answer) is kept under this key in sessionStorage:
// this tab only, gone when the tab closes.
const SESSION_KEY = "robogpt-video.session";

const $ = (id) => document.getElementById(id);
const tiles = new Map();    // stream name -> tile
let tileMode = "live";      // "live" or "snapshot", for every tile at once
let openStream = null;      // name shown in the single-stream view, or null
let reviewing = false;      // the recordings page (recordings.js) is shown
let svTimers = [];
let lastSegment = null;     // the open stream's recording file: a new one refreshes the table
let svCreated = null;       // the open stream's created_at; another one means reconnect
let svLive = false;         // whether the open stream's live <img> is (to be) showing
let session = null;         // {user, token, expires, permissions} once signed in
let authEpoch = 0;          // +1 at every sign-in and sign-out: older answers are dropped
let statusOnlyHealth = false;  // /health left out its details: access control is on
let signedOutNote = null;   // what the sign-in form says after "Sign out"
let dashboardLoops = [];    // stops the grid's poll
let holdTimer = null;       // counts down a 429's Retry-After on the sign-in button

function liveTileLimit() {
  const forced = new URLSearchParams(location.search).get("tiles");
  if (forced === "live") return Infinity;
  if (forced === "snapshot") return 0;
  const nav = performance.getEntriesByType("navigation")[0];
  const multiplexed = nav && /^(h2|h3)/.test(nav.nextHopProtocol || "");
  return multiplexed ? LIVE_TILES_HTTP2 : LIVE_TILES_HTTP1;
}

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
};

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
      plural(health.viewers, "viewer"),
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

// ---- grid ---------------------------------------------------------------------

function makeTile(name) {
  const img = el("img", { alt: `Live view of ${name}`, decoding: "async" });
  const meta = el("div", { className: "meta" });
  const caption = el("div", { className: "caption" },
    el("div", { className: "name", textContent: name }), meta);
  const link = el("a", { className: "tile", href: `#/stream/${enc(name)}` }, img, caption);
  const li = el("li", {}, link);
  li.dataset.stream = name;
  const tile = { name, img, meta, link, li, mode: null, timer: null, onscreen: true };
  tile.created = null;  // the stream's created_at: another one means a new stream, same name
  tile.generation = 0;
  const snapshotDone = (delay) => {
    if (tile.mode === "snapshot" && img.src !== BLANK) nextSnapshot(tile, delay);
  };
  img.addEventListener("load", () => snapshotDone(SNAPSHOT_MS));
  img.addEventListener("error", () => snapshotDone(2 * SNAPSHOT_MS));
  return tile;
}

// Tiles run only while the grid is on screen: hidden tabs and the single-stream view
// let go of their connections (the browser's limit is shared by every tab).
const gridMode = () => (openStream === null && !reviewing && !document.hidden ? tileMode : "stopped");

// A tile asks for frames no wider than it shows (in device pixels, rounded up to a
// multiple of TILE_STEP so that tiles of about the same size share one resized version
// on the server); a stream no wider than that is sent as it is.
const TILE_STEP = 160;

function tileQuery(tile, extra) {
  const params = new URLSearchParams(extra);
  const shown = tile.link.clientWidth * (window.devicePixelRatio || 1);
  const width = Math.ceil(shown / TILE_STEP) * TILE_STEP;
  if (width > 0 && tile.streamWidth > width) params.set("width", width);
  const query = params.toString();
  return query ? `?${query}` : "";
}

function setTileMode(tile, mode) {
  if (tile.mode === mode) return;
  tile.mode = mode;
  clearTimeout(tile.timer);
  if (mode === "live") {
    // A query string only after a reconnect: the same URL may be served from image memory.
    const again = tile.generation ? { g: tile.generation } : {};
    tile.img.src = withToken(`/stream/${enc(tile.name)}${tileQuery(tile, again)}`);
  }
  else {
    tile.img.src = BLANK;
    if (mode === "snapshot") nextSnapshot(tile, 0);
  }
}

function nextSnapshot(tile, delay) {
  clearTimeout(tile.timer);
  tile.timer = setTimeout(() => {
    if (tile.mode !== "snapshot") return;
    if (!tile.onscreen || document.hidden) return nextSnapshot(tile, SNAPSHOT_MS);
    // A new URL each time; the old JPEG stays on screen until the new one is decoded.
    tile.img.src = withToken(`/snapshot/${enc(tile.name)}${tileQuery(tile, { t: Date.now() })}`);
  }, delay);
}

const onscreen = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const tile = tiles.get(entry.target.dataset.stream);
      if (tile) tile.onscreen = entry.isIntersecting;
    }
  })
  : null;

function updateTile(tile, s) {
  const idle = s.inactive_seconds >= 2;
  tile.link.classList.toggle("idle", idle);
  tile.meta.replaceChildren(
    `${s.fps.toFixed(1)} fps · ${fmt.size(s)} · ${plural(s.viewer_count, "viewer")} · `,
    el("span", {
      className: "inactive", textContent: `inactive ${fmt.seconds(s.inactive_seconds)}`,
    }),
  );
}

function removeTile(tile) {
  tile.mode = null;
  clearTimeout(tile.timer);
  tile.img.src = BLANK;
  onscreen && onscreen.unobserve(tile.li);
  tile.li.remove();
  tiles.delete(tile.name);
}

async function pollStreams() {
  const { streams } = await getJSON("/api/streams");
  signedOutNote = null;  // streams without signing in: a later 401 is not about "Sign out"
  const names = new Set(streams.map((s) => s.name));
  for (const tile of [...tiles.values()]) if (!names.has(tile.name)) removeTile(tile);
  tileMode = streams.length <= liveTileLimit() ? "live" : "snapshot";
  const grid = $("grid");
  for (const s of streams) {
    let tile = tiles.get(s.name);
    if (!tile) {
      tile = makeTile(s.name);
      tiles.set(s.name, tile);
      // Keep name order by inserting before the first larger name; existing tiles never move.
      const after = [...grid.children].find((li) => li.dataset.stream > s.name);
      grid.insertBefore(tile.li, after || null);
      onscreen && onscreen.observe(tile.li);
    }
    updateTile(tile, s);
    tile.streamWidth = s.width || 0;
    if (tile.created !== null && tile.created !== s.created_at) {
      tile.generation += 1;  // removed and created again between two polls: reconnect
      tile.mode = null;
    }
    tile.created = s.created_at;
    setTileMode(tile, gridMode());
  }
  $("empty").hidden = streams.length > 0;
  const note = $("grid-mode");
  note.hidden = tileMode === "live" || streams.length === 0;
  note.textContent = `Tiles show a snapshot every ${SNAPSHOT_MS / 1000} s: more than ` +
    `${liveTileLimit()} live MJPEG tiles would use up the browser's connections to this ` +
    "server. Open a stream for live video.";
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
    rows.push(["Recording to", rec.segment ? rec.segment.split("/").pop() : "no open file"]);
    rows.push(["Recorded", `${rec.frames_written} frames, ${fmt.bytes(rec.bytes_written)}`]);
    const notRecorded = `${rec.frames_dropped} dropped, ${rec.frames_skipped_fps} above fps cap`;
    rows.push(["Not recorded", notRecorded]);
    if (rec.error) rows.push(["Recording error", rec.error]);
  }
  const items = rows.flatMap(([key, value]) => [
    el("dt", { textContent: key }), el("dd", { textContent: value }),
  ]);
  $("sv-stats").replaceChildren(...items);
}

// The open stream's live image; `fresh`: a new URL, so the browser asks again.
function showLive(name, fresh) {
  svLive = true;
  $("sv-live").hidden = false;
  $("sv-state").hidden = false;
  $("sv-denied").hidden = true;
  $("sv-side").hidden = false;
  $("sv-live").src = withToken(`/stream/${enc(name)}${fresh ? `?t=${Date.now()}` : ""}`);
}

// 403: the video's place says so (no broken image); a later allowed answer reconnects.
function denyView(name, error) {
  svLive = false;
  svCreated = "denied";
  $("sv-live").src = BLANK;
  $("sv-live").hidden = true;
  $("sv-state").hidden = true;
  $("sv-side").hidden = true;
  const denied = $("sv-denied");
  denied.textContent = `Not allowed: you may not watch ${name} (${error.message}).`;
  denied.hidden = false;
  $("sv-state").textContent = "";
  $("sv-stats").replaceChildren();
}

async function pollStats(name) {
  let stats;
  try {
    stats = await getJSON(`/api/streams/${enc(name)}/stats`);
  } catch (error) {
    if (openStream !== name) throw error;
    if (error.status === 403) return denyView(name, error);
    if (error.status !== 404) throw error;
    svCreated = "gone";  // its MJPEG response has ended: reconnect once it is back
    $("sv-state").textContent = "Not live: the stream ended or has not started.";
    $("sv-stats").replaceChildren();
    return;
  }
  if (openStream !== name) return;  // the view changed while we waited
  if (!svLive) {
    showLive(name, svCreated !== null);  // allowed now (see openView)
  } else if (svCreated !== null && svCreated !== stats.created_at) {
    showLive(name, true);  // ended and created again
  }
  svCreated = stats.created_at;
  showStats(stats);
  $("sv-state").textContent = stats.inactive_seconds >= 2 ? "Live (no new frame)" : "Live";
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
  for (const tile of tiles.values()) setTileMode(tile, "stopped");  // free their connections
  $("grid-view").hidden = true;
  $("stream-view").hidden = false;
  $("sv-name").textContent = name;
  document.title = `${name} · robogpt-video`;
  $("sv-live").alt = `Live video of ${name}`;
  $("sv-snapshot").href = withToken(`/snapshot/${enc(name)}`);
  $("sv-mjpeg").href = withToken(`/stream/${enc(name)}`);
  $("sv-review").href = `#/recordings?stream=${enc(name)}`;
  $("sv-state").textContent = "";
  lastSegment = null;
  svCreated = null;
  svLive = false;
  $("sv-denied").hidden = true;
  $("sv-live").hidden = false;
  $("sv-state").hidden = false;
  $("sv-side").hidden = false;
  // A stream of the grid may be watched (the server lists only those): live at once.
  // Any other waits for its statistics, so the <img> never asks without permission
  // (a 401 with a Basic challenge makes a browser open its own password prompt).
  if (tiles.has(name)) showLive(name, false);
  else $("sv-live").src = BLANK;
  svTimers = [
    every(POLL_MS, () => pollStats(name)),
    every(RECORDINGS_MS, () => pollRecordings(name)),
  ];
}

function closeView() {
  svTimers.forEach((stop) => stop());
  svTimers = [];
  svLive = false;
  $("sv-live").src = BLANK;
  closePlayer();
  openStream = null;
  $("stream-view").hidden = true;
  $("grid-view").hidden = false;
  document.title = "robogpt-video";
  for (const tile of tiles.values()) setTileMode(tile, gridMode());
}

function route() {
  if (!$("signin").hidden) return;  // the views open once signed in
  const reviewMatch = location.hash.match(/^#\/recordings(?:\?(.*))?$/);
  if (reviewMatch) {
    if (openStream !== null) closeView();
    reviewing = true;
    $("grid-view").hidden = true;
    for (const tile of tiles.values()) setTileMode(tile, "stopped");
    return openRecordings(new URLSearchParams(reviewMatch[1] || ""));
  }
  if (reviewing) {
    reviewing = false;
    closeRecordings();
    $("grid-view").hidden = false;
    for (const tile of tiles.values()) setTileMode(tile, gridMode());
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

// Everything that asks the server for streams stops, and every <img> lets go.
function stopDashboard() {
  dashboardLoops.forEach((stop) => stop());
  dashboardLoops = [];
  for (const tile of [...tiles.values()]) removeTile(tile);
  if (openStream !== null) closeView();
  if (reviewing) {
    reviewing = false;
    closeRecordings();
  }
  $("grid-view").hidden = true;
  $("empty").hidden = true;
  $("grid-mode").hidden = true;
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
  document.addEventListener("visibilitychange", () => {
    for (const tile of tiles.values()) setTileMode(tile, gridMode());
    if (openStream === null || !svLive) return;
    if (document.hidden) $("sv-live").src = BLANK;
    else showLive(openStream, true);
  });
  session = readSession();
  startDashboard();
  every(HEALTH_MS, pollHealth);
});
