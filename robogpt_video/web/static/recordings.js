// robogpt-video dashboard: the recordings page (#/recordings). Every recording of every
// stream the user may play back, a per-stream timeline of one day, a player with pause,
// seek, speed and frame steps, and H.264 clip export. Uses app.js's helpers ($, el,
// getJSON, withToken, failure, session, fmt); app.js's router calls openRecordings and
// closeRecordings. Plain DOM, no build step (docs/dashboard.md).
"use strict";

const REVIEW_MS = 10000;        // the listing and the timeline, while the page shows
const CLIP_POLL_MS = 500;       // a clip job's progress
const MAX_ROWS = 500;           // table rows shown; the filter narrows the rest
const DRAG_PX = 4;              // a pointer moved further than this drags a clip range

// ---- one time zone for the whole dashboard: the browser's, named -------------------

const pad = (n, width = 2) => String(n).padStart(width, "0");

// "Europe/Berlin (UTC+01:00)": the zone every time on the page is shown in.
function zoneName() {
  const name = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  const minutes = -new Date().getTimezoneOffset();
  const sign = minutes < 0 ? "−" : "+";
  return `${name} (UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)})`;
}

// Unix seconds as "2026-01-21 10:30:05" (or ".125" more) in the browser's zone.
function localTime(seconds, millis = false) {
  const d = new Date(seconds * 1000);
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return millis ? `${text}.${pad(d.getMilliseconds(), 3)}` : text;
}

// The same instant as an <input type=datetime-local> value, and back.
function inputValue(seconds) {
  return localTime(seconds, true).replace(" ", "T");
}
function fromInput(value) {
  const ms = new Date(value).getTime();  // a value without a zone is local time
  return Number.isNaN(ms) ? null : ms / 1000;
}
const iso = (seconds) => new Date(seconds * 1000).toISOString();

// ---- API requests with a body, and raw answers -------------------------------------

const authHeaders = () => (session ? { Authorization: `Bearer ${session.token}` } : {});

async function fetchOk(url, options = {}) {
  const response = await fetch(url, {
    cache: "no-store", credentials: "omit", ...options,
    headers: { ...authHeaders(), ...(options.headers || {}) },
  });
  if (!response.ok) throw await failure(url, response);
  return response;
}

async function postJSON(url, body) {
  const response = await fetchOk(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the listing --------------------------------------------------------------------

const review = {
  open: false, timers: [], streams: new Set(), table: "", timeline: "", day: null,
  pending: null,  // {file, t} of the address: opened once listed
};

// Times of a listing entry in Unix seconds; an open one lasts until now.
function span(rec) {
  const start = Date.parse(rec.start_time) / 1000;
  let end = rec.end_time ? Date.parse(rec.end_time) / 1000 : null;
  if (end === null) end = rec.open ? Date.now() / 1000 : start + (rec.duration_seconds || 0);
  return { start, end: Math.max(start, end) };
}

function rememberStreams(recordings) {
  const before = review.streams.size;
  for (const rec of recordings) review.streams.add(rec.stream_name);
  if (review.streams.size === before && $("rv-stream").options.length > 1) return;
  const names = [...review.streams].sort();
  for (const [select, all] of [[$("rv-stream"), true], [$("rv-clip-stream"), false]]) {
    const chosen = select.value;
    const options = names.map((name) => el("option", { value: name, textContent: name }));
    if (all) options.unshift(el("option", { value: "", textContent: "All streams" }));
    select.replaceChildren(...options);
    select.value = chosen && review.streams.has(chosen) ? chosen : (all ? "" : names[0] || "");
  }
}

function filterQuery(extra = {}) {
  const params = new URLSearchParams();
  const stream = $("rv-stream").value;
  if (stream) params.set("stream", stream);
  const since = fromInput($("rv-since").value);
  const until = fromInput($("rv-until").value);
  if (since !== null) params.set("since", iso(since));
  if (until !== null) params.set("until", iso(until));
  for (const [key, value] of Object.entries(extra)) params.set(key, value);
  return params.toString();
}

function reviewDenied(error) {
  $("rv-denied").textContent = `Not allowed: you may not play back recordings (${error.message}).`;
  $("rv-denied").hidden = false;
  for (const id of ["rv-filter", "rv-timeline-box", "rv-clips-box", "rv-table", "rv-count"]) {
    $(id).hidden = true;
  }
}

async function refreshReview() {
  let table, day;
  try {
    [table, day] = await Promise.all([
      getJSON(`/api/recordings?${filterQuery()}`),
      getJSON(`/api/recordings?${dayQuery()}`),
    ]);
  } catch (error) {
    if (error.status === 403 && review.open) return reviewDenied(error);
    throw error;
  }
  if (!review.open) return;
  $("rv-denied").hidden = true;
  for (const id of ["rv-filter", "rv-timeline-box", "rv-clips-box", "rv-table", "rv-count"]) {
    $(id).hidden = false;
  }
  rememberStreams(day.recordings);
  if (!$("rv-stream").value) rememberStreams(table.recordings);
  showTable(table.recordings);
  review.day = day.recordings;
  showTimeline(day.recordings);
  if (review.pending) {
    const wanted = table.recordings.find((rec) => rec.file === review.pending.file);
    if (wanted) openRecording(wanted, review.pending.t);
    review.pending = null;
  }
}

function refreshSoon() {
  review.table = review.timeline = "";  // rebuild even if the answer is the same
  refreshReview().catch(failed);
}

// ---- the table ------------------------------------------------------------------------

function cell(label, ...children) {
  const td = el("td", {}, ...children);
  td.dataset.label = label;
  return td;
}

function tableRow(rec) {
  const { start, end } = span(rec);
  const playButton = el("button", { type: "button", textContent: "Play" });
  playButton.setAttribute("aria-label", `Play ${rec.file}`);
  playButton.addEventListener("click", () => openRecording(rec, 0));
  const download = el("a", { className: "button", href: withToken(rec.download_url),
    textContent: "Download" });
  download.setAttribute("download", rec.file);
  download.setAttribute("aria-label", `Download ${rec.file}`);
  const clip = el("button", { type: "button", textContent: "Export clip" });
  clip.setAttribute("aria-label", `Export ${rec.file} as an H.264 MP4 clip`);
  clip.addEventListener("click", () => exportClip(rec.stream_name, start, end));
  let status = rec.status;
  if (status === "recording") status = rec.open ? "recording (being written)" : "closing";
  const row = el("tr", {},
    cell("Stream", breakable(rec.stream_name)),
    cell("File", breakable(rec.file)),
    cell("Start", localTime(start)),
    cell("Duration", rec.open ? `${fmt.seconds(end - start)} so far` : fmt.seconds(rec.duration_seconds)),
    cell("Size", fmt.bytes(rec.size_bytes)),
    cell("Status", status),
    el("td", { className: "actions" }, playButton, " ", download, " ", clip));
  row.dataset.file = rec.file;
  row.dataset.stream = rec.stream_name;
  row.dataset.status = rec.status;
  return row;
}

function showTable(recordings) {
  const key = JSON.stringify(recordings);
  if (key === review.table) return;  // unchanged: keep the rows (and the focus in them)
  review.table = key;
  const shown = recordings.slice(0, MAX_ROWS);
  $("rv-table").tBodies[0].replaceChildren(...shown.map(tableRow));
  $("rv-count").textContent = recordings.length === 0 ? "No recordings match."
    : recordings.length > shown.length
      ? `The newest ${shown.length} of ${recordings.length} recordings: narrow the filter to see the rest.`
      : plural(recordings.length, "recording");
}

// ---- the timeline ------------------------------------------------------------------------

function todayValue() {
  const d = new Date();
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

// The chosen day from local midnight to the next (23 or 25 hours on a DST change).
function dayBounds() {
  const [y, m, d] = ($("rv-day").value || todayValue()).split("-").map(Number);
  return { from: new Date(y, m - 1, d).getTime() / 1000, to: new Date(y, m - 1, d + 1).getTime() / 1000 };
}

function dayQuery() {
  const { from, to } = dayBounds();
  const params = new URLSearchParams({ since: iso(from), until: iso(to) });
  if ($("rv-stream").value) params.set("stream", $("rv-stream").value);
  return params.toString();
}

const TICKS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600];

function showTimeline(recordings) {
  const key = JSON.stringify([recordings, $("rv-zoom").value, $("rv-day").value]);
  if (key === review.timeline) return;
  review.timeline = key;
  const day = dayBounds();
  const byStream = new Map();
  let first = Infinity;
  let last = -Infinity;
  for (const rec of recordings) {
    const { start, end } = span(rec);
    const from = Math.max(start, day.from);
    const to = Math.min(end, day.to);
    if (to < from) continue;
    if (!byStream.has(rec.stream_name)) byStream.set(rec.stream_name, []);
    byStream.get(rec.stream_name).push({ rec, start, end, from, to });
    first = Math.min(first, from);
    last = Math.max(last, to);
  }
  const box = $("rv-timeline");
  $("rv-timeline-empty").hidden = byStream.size > 0;
  if (byStream.size === 0) return box.replaceChildren();
  let view = { from: day.from, to: day.to };
  if ($("rv-zoom").value === "fit") {
    const margin = Math.max(5, (last - first) * 0.05);
    view = { from: Math.max(day.from, first - margin), to: Math.min(day.to, last + margin) };
  }
  review.view = view;
  const x = (t) => `${((t - view.from) / (view.to - view.from)) * 100}%`;
  const rows = [...byStream.keys()].sort().map((name) => {
    const bar = el("div", { className: "tl-bar" });
    bar.dataset.stream = name;
    for (const item of byStream.get(name)) {
      const part = el("button", { type: "button", className: "tl-span" });
      part.style.left = x(item.from);
      part.style.width = `calc(${x(item.to)} - ${x(item.from)})`;
      part.dataset.file = item.rec.file;
      part.dataset.start = item.start;
      part.dataset.end = item.end;
      part.title = `${item.rec.file}\n${localTime(item.start)} – ${localTime(item.end)}`;
      part.setAttribute("aria-label", `Play ${name} from ${localTime(item.from)} (${item.rec.file})`);
      part.addEventListener("click", (event) => {
        if (event.detail === 0) openRecording(item.rec, item.from - item.start);  // keyboard
      });
      bar.append(part);
    }
    bar.spans = byStream.get(name);
    watchBar(bar);
    return el("div", { className: "tl-row" }, el("span", { className: "tl-name" }, breakable(name)), bar);
  });
  const axis = el("div", { className: "tl-axis" });
  const length = view.to - view.from;
  // As many labels as fit (about 5.5 rem each) on the bar's width.
  const room = Math.max(2, Math.floor((box.clientWidth - 180) / 90));
  const step = TICKS.find((s) => length / s <= room) || TICKS[TICKS.length - 1];
  for (let t = Math.ceil(view.from / step) * step; t <= view.to; t += step) {
    const label = localTime(t).slice(11, step >= 60 ? 16 : 19);  // HH:MM or HH:MM:SS
    const share = (t - view.from) / length;
    // Labels near either end stay inside the bar.
    const edge = share < 0.1 ? " first" : share > 0.9 ? " last" : "";
    const tick = el("span", { className: `tl-tick${edge}`, textContent: label });
    tick.style.left = x(t);
    axis.append(tick);
  }
  box.replaceChildren(el("div", { className: "tl-row" }, el("span", { className: "tl-name" }), axis), ...rows);
}

// On a stream's bar: a click plays the recording under the pointer from there; a drag
// chooses a time range for a clip.
function watchBar(bar) {
  let down = null;
  const timeAt = (clientX) => {
    const box = bar.getBoundingClientRect();
    const share = Math.min(1, Math.max(0, (clientX - box.left) / box.width));
    return review.view.from + share * (review.view.to - review.view.from);
  };
  const band = el("div", { className: "tl-selection", hidden: true });
  bar.append(band);
  bar.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    down = { x: event.clientX, dragging: false };
    bar.setPointerCapture(event.pointerId);
  });
  bar.addEventListener("pointermove", (event) => {
    if (!down) return;
    if (!down.dragging && Math.abs(event.clientX - down.x) <= DRAG_PX) return;
    down.dragging = true;
    const box = bar.getBoundingClientRect();
    const [a, b] = [down.x, event.clientX].map((v) => Math.min(box.right, Math.max(box.left, v)) - box.left);
    Object.assign(band.style, { left: `${Math.min(a, b)}px`, width: `${Math.abs(b - a)}px` });
    band.hidden = false;
  });
  bar.addEventListener("pointerup", (event) => {
    if (!down) return;
    const start = down;
    down = null;
    if (start.dragging) {
      const [from, to] = [timeAt(start.x), timeAt(event.clientX)].sort((p, q) => p - q);
      chooseClip(bar.dataset.stream, from, to);
      return;
    }
    band.hidden = true;
    const t = timeAt(event.clientX);
    const hit = bar.spans.find((s) => s.from <= t && t <= s.to);
    if (hit) openRecording(hit.rec, t - hit.start);
  });
}

// ---- the player ----------------------------------------------------------------------------
// Frames come from /play (multipart MJPEG, read with fetch so each frame's X-Offset is
// known) and /frame (one JPEG with its neighbours' offsets). Pause ends the request;
// play, seek and another speed are a new request from the current offset.

const player = {
  rec: null, start: 0, offset: 0, duration: 0, previous: null, next: null,
  playing: false, controller: null, url: null, speed: 1, frames: 0, trace: [],
  still: 0, resume: false,
};

const frameUrl = (rec) => `${rec.download_url}/frame`;

function showFrame(blob, offset, timestamp) {
  const img = $("rv-frame");
  const old = img.src;
  img.src = URL.createObjectURL(blob);
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  player.offset = offset;
  img.dataset.offset = offset;
  img.dataset.timestamp = timestamp;
  player.duration = Math.max(player.duration, offset);
  $("rv-seek").max = player.duration;
  if (!player.seeking) $("rv-seek").value = offset;
  $("rv-clock").textContent =
    `${localTime(timestamp, true)} · ${offset.toFixed(3)} s of ${player.duration.toFixed(1)} s`;
}

function showState() {
  $("rv-toggle").textContent = player.playing ? "Pause" : "Play";
  $("rv-back").disabled = player.playing || (player.previous === null && player.offset <= 0);
  $("rv-forward").disabled = player.playing || (player.next === null && player.ended);
}

const CRLF2 = [13, 10, 13, 10];

function headEnd(buffer) {
  outer: for (let i = 0; i + 3 < buffer.length; i++) {
    for (let k = 0; k < 4; k++) if (buffer[i + k] !== CRLF2[k]) continue outer;
    return i;
  }
  return -1;
}

// Each part of a multipart/x-mixed-replace body: onPart(headers, jpegBytes).
async function readParts(response, onPart) {
  const reader = response.body.getReader();
  const latin1 = new TextDecoder("latin1");
  let buffer = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const joined = new Uint8Array(buffer.length + value.length);
    joined.set(buffer);
    joined.set(value, buffer.length);
    buffer = joined;
    for (;;) {
      const end = headEnd(buffer);
      if (end < 0) break;
      const headers = {};
      for (const line of latin1.decode(buffer.subarray(0, end)).split("\r\n")) {
        const colon = line.indexOf(":");
        if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const length = Number(headers["content-length"]);
      if (buffer.length < end + 4 + length + 2) break;
      onPart(headers, buffer.slice(end + 4, end + 4 + length));
      buffer = buffer.subarray(end + 4 + length + 2);
    }
  }
}

function stopPlaying() {
  if (player.controller) player.controller.abort();
  player.controller = null;
  player.playing = false;
}

async function playFrom(from) {
  stopPlaying();
  const rec = player.rec;
  const controller = new AbortController();
  Object.assign(player, { controller, playing: true, ended: false, previous: null, next: null });
  player.url = `${rec.play_url}?start=${from}&speed=${player.speed}`;
  showState();
  try {
    const response = await fetchOk(player.url, { signal: controller.signal });
    await readParts(response, (headers, jpeg) => {
      if (controller.signal.aborted) return;
      const offset = Number(headers["x-offset"]);
      showFrame(new Blob([jpeg], { type: "image/jpeg" }), offset, Number(headers["x-timestamp"]));
      player.frames += 1;
      player.trace.push([performance.now(), offset]);
    });
  } catch (error) {
    if (controller.signal.aborted) return;  // paused, seeking or closed
    $("rv-jump-note").textContent = `Replay stopped: ${error.message}`;
  }
  if (player.controller !== controller) return;
  // The end (of what is written so far): stay on the last frame.
  player.controller = null;
  player.playing = false;
  player.ended = true;
  await showStill(player.offset).catch(failed);
  showState();
}

// Show the frame at `t` (seconds into the recording) and learn its neighbours; an
// answer overtaken by a later request, or by playing, is dropped.
async function showStill(t) {
  const rec = player.rec;
  const ticket = ++player.still;
  const response = await fetchOk(`${frameUrl(rec)}?t=${t}`);
  const blob = await response.blob();
  if (ticket !== player.still || player.playing || player.rec !== rec) return;
  const h = response.headers;
  showFrame(blob, Number(h.get("x-offset")), Number(h.get("x-timestamp")));
  // Kept as the server wrote them: sent back as they are, they name that frame exactly.
  player.previous = h.get("x-previous-offset");
  player.next = h.get("x-next-offset");
  showState();
}

function togglePlay() {
  if (player.playing) {
    stopPlaying();
    showState();
    showStill(player.offset).catch(failed);  // the frame on screen, and its neighbours
  } else {
    playFrom(player.ended && player.next === null ? 0 : player.offset);
  }
}

async function stepFrame(direction) {
  if (player.playing) stopPlaying();
  if (player.previous === null && player.next === null) await showStill(player.offset);
  const target = direction > 0 ? player.next : player.previous;
  if (target !== null) await showStill(target);
  showState();
}

function openRecording(rec, offset = 0) {
  stopPlaying();
  const { start, end } = span(rec);
  Object.assign(player, {
    rec, start, offset, duration: end - start, previous: null, next: null, ended: false,
    frames: 0, trace: [],
  });
  $("rv-player").hidden = false;
  $("rv-player-title").replaceChildren(`${rec.stream_name} · `, breakable(rec.file));
  $("rv-frame").alt = `Replay of ${rec.file}`;
  $("rv-seek").max = player.duration;
  $("rv-seek").value = offset;
  $("rv-download").href = withToken(rec.download_url);
  $("rv-download").setAttribute("download", rec.file);
  $("rv-jump-note").textContent = "";
  $("rv-jump-at").value = inputValue(start + offset);
  $("rv-player").scrollIntoView({ block: "start" });
  playFrom(offset);
}

function closeReviewPlayer() {
  stopPlaying();
  player.rec = null;
  player.still += 1;
  const img = $("rv-frame");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.removeAttribute("src");
  $("rv-player").hidden = true;
}

// Go to a wall-clock time of the open recording's stream, in whichever segment covers it.
async function jump(event) {
  event.preventDefault();
  const at = fromInput($("rv-jump-at").value);
  if (at === null || !player.rec) return;
  const stream = player.rec.stream_name;
  const query = new URLSearchParams({ stream, since: iso(at), until: iso(at) });
  const { recordings } = await getJSON(`/api/recordings?${query}`);
  const covering = recordings.find((rec) => {
    const { start, end } = span(rec);
    return start <= at && at <= end;
  });
  if (!covering) {
    $("rv-jump-note").textContent = `No recording of ${stream} at ${localTime(at, true)}.`;
    return;
  }
  openRecording(covering, at - span(covering).start);
  $("rv-jump-note").textContent = `${localTime(at, true)} is in ${covering.file}.`;
}

// ---- clips (POST /api/clips, then poll GET /api/clips/<id>) -----------------------------

function chooseClip(stream, from, to) {
  $("rv-clip-stream").value = stream;
  $("rv-clip-start").value = inputValue(from);
  $("rv-clip-end").value = inputValue(to);
  $("rv-clip-form").scrollIntoView({ block: "nearest" });
}

async function exportClip(stream, start, end) {
  const bar = el("progress", { max: 1, value: 0 });
  const status = el("span", { className: "clip-status", textContent: "asking the server…" });
  const item = el("li", { className: "clip" },
    el("div", { className: "clip-title", textContent:
      `${stream} · ${localTime(start, true)} – ${localTime(end, true)}` }), bar, status);
  item.dataset.stream = stream;
  $("rv-clips").prepend(item);
  item.scrollIntoView({ block: "nearest" });
  try {
    let job = await postJSON("/api/clips", { stream, start, end });
    item.dataset.id = job.id;
    while (job.status === "queued" || job.status === "running") {
      bar.value = job.progress;
      status.textContent = job.status === "queued" ? "waiting for its turn…"
        : `${job.frames_done} / ${job.frames_total} frames`;
      await sleep(CLIP_POLL_MS);
      job = await getJSON(`/api/clips/${enc(job.id)}`);
    }
    item.dataset.status = job.status;
    if (job.status !== "ready") throw new Error(job.error || `the clip ${job.status}`);
    bar.value = 1;
    const name = `${stream}_${localTime(start).replace(/[-: ]/g, "")}.mp4`;
    const link = el("a", { className: "button", href: withToken(job.url), textContent:
      `Download clip (${fmt.bytes(job.size_bytes)})` });
    link.setAttribute("download", name);
    const video = el("video", { controls: true, preload: "metadata", src: withToken(job.url) });
    video.setAttribute("playsinline", "");
    status.replaceWith(link);
    bar.replaceWith(video);
  } catch (error) {
    if (error.stale) return item.remove();
    item.dataset.status = "failed";
    status.textContent = `Export failed: ${error.message}`;
    status.classList.add("error");
    if (error.status === 401) failed(error);
  }
}

function submitClip(event) {
  event.preventDefault();
  const start = fromInput($("rv-clip-start").value);
  const end = fromInput($("rv-clip-end").value);
  if (start === null || end === null) return;
  exportClip($("rv-clip-stream").value, start, end);
}

// ---- the page -------------------------------------------------------------------------------

let reviewReady = false;

function setUpReview() {
  if (reviewReady) return;
  reviewReady = true;
  $("rv-zone").textContent = zoneName();
  $("rv-day").value = todayValue();
  $("rv-filter").addEventListener("submit", (event) => { event.preventDefault(); refreshSoon(); });
  $("rv-stream").addEventListener("change", refreshSoon);
  $("rv-clear").addEventListener("click", () => {
    $("rv-stream").value = $("rv-since").value = $("rv-until").value = "";
    refreshSoon();
  });
  $("rv-day").addEventListener("change", refreshSoon);
  $("rv-zoom").addEventListener("change", refreshSoon);
  $("rv-toggle").addEventListener("click", togglePlay);
  $("rv-back").addEventListener("click", () => stepFrame(-1).catch(failed));
  $("rv-forward").addEventListener("click", () => stepFrame(1).catch(failed));
  $("rv-speed").addEventListener("change", () => {
    player.speed = Number($("rv-speed").value);
    if (player.playing) playFrom(player.offset);
  });
  const seek = $("rv-seek");
  seek.addEventListener("input", () => {
    if (!player.seeking) player.resume = player.playing;
    player.seeking = true;
    stopPlaying();
    showStill(Number(seek.value)).catch(failed);
  });
  seek.addEventListener("change", () => {
    player.seeking = false;
    if (player.resume) playFrom(Number(seek.value));
    else showStill(Number(seek.value)).catch(failed);
  });
  $("rv-jump").addEventListener("submit", (event) => jump(event).catch(failed));
  $("rv-clip").addEventListener("click", () => {
    const { start, end } = span(player.rec);
    exportClip(player.rec.stream_name, start, end);
  });
  $("rv-close").addEventListener("click", closeReviewPlayer);
  $("rv-clip-form").addEventListener("submit", submitClip);
  window.addEventListener("resize", () => {
    if (!review.open || !review.day) return;
    review.timeline = "";  // the labels that fit change with the width
    showTimeline(review.day);
  });
}

// #/recordings?stream=<name>[&file=<file>[&t=<seconds>]]
function openRecordings(params) {
  setUpReview();
  $("recordings-view").hidden = false;
  document.title = "Recordings · robogpt-video";
  const stream = params.get("stream");
  if (stream !== null) {
    if (![...$("rv-stream").options].some((o) => o.value === stream)) {
      $("rv-stream").append(el("option", { value: stream, textContent: stream }));
    }
    $("rv-stream").value = stream;
  }
  if (params.get("file")) review.pending = { file: params.get("file"), t: Number(params.get("t")) || 0 };
  if (review.open) return refreshSoon();
  review.open = true;
  review.table = review.timeline = "";
  review.timers = [every(REVIEW_MS, refreshReview)];
}

function closeRecordings() {
  review.open = false;
  review.timers.forEach((stop) => stop());
  review.timers = [];
  closeReviewPlayer();
  $("recordings-view").hidden = true;
  document.title = "robogpt-video";
}
