// The review page (docs/review.md §5): waits for the manifest to be read and verified, shows
// the verdict, then the timeline, a page at a time as it is scrolled; filters re-query the
// server; the player, Share and Delete live in their own modules.
//
// Everything is built with textContent (no HTML from data), from files of this app only (the
// CSP allows nothing else), and no plaintext is kept beyond what the page shows.

import { ApiError, eventsPath, getJSON, postJSON, sleep } from "./api.js";
import { DeleteDialog, ShareDialog } from "./actions.js";
import { $, el, icon, show, toast } from "./dom.js";
import { Filters } from "./filters.js";
import { count, figure } from "./format.js";
import { Player } from "./player.js";
import { Timeline } from "./timeline.js";
import { renderTrust } from "./trust.js";

// Events per request while scrolling; `#limit=N` in the address sets it (1-200: a small one
// shows the paging with few events, in tests and when debugging).
const PAGE = Math.min(200, Math.max(1,
  Number(new URLSearchParams(location.hash.slice(1)).get("limit")) || 60));
const REFILL = 200; // per request when a reload re-reads what was on the page
const POLL_MS = 300; // /api/status while loading
const WATCH_MS = 15000; // /api/status while ready: problems found while serving

const list = { next: null, busy: false, generation: 0, controller: null };
const filters = new Filters(() => { if (ready) firstPage(); },
  PAGE === 60 ? {} : { limit: String(PAGE) });
let ready = false;

const timeline = new Timeline($("timeline"), (id) => openEvent(id));
const player = new Player({
  neighbour: neighbour,
  canStep: (id, step) => Boolean(timeline.neighbour(id, step) || (step > 0 && list.next)),
  share: (event) => shareDialog.open(event),
  remove: (event) => deleteDialog.open(event),
  playFailed: playFailed,
});
const shareDialog = new ShareDialog((event) => {
  toast("Shared");
  afterAction(event.id);
});
const deleteDialog = new DeleteDialog((event) => {
  player.close();
  timeline.remove(event.id);
  toast("Deleted");
  afterAction(null);
});

// ---- states: loading, a message instead of the timeline, the timeline ------------------------

const MESSAGES = {
  "not-recipient": {
    icon: "key",
    title: "This key opens none of these clips",
    text: "The identity given to obscura review is not a recipient of any bridge in this bucket. "
      + "Start it with the owner key that the bridge encrypts clips to.",
  },
  "bucket-unreachable": {
    icon: "cloud-off",
    title: "The bucket cannot be reached",
    text: "Check the bucket's address, its credentials and the network, then try again.",
    action: "Try again",
  },
  "no-bucket": {
    icon: "cloud-off",
    title: "No bucket to read",
    text: "Give obscura review a bucket (--bucket URL) or a configuration with [storage].",
  },
  forbidden: {
    icon: "lock",
    title: "Not signed in",
    text: "Open the URL that obscura review printed: it carries this run's token.",
  },
  "app-offline": {
    icon: "cloud-off",
    title: "The review app is not running",
    text: "Start obscura review again and open the URL it prints.",
    action: "Try again",
  },
  empty: {
    icon: "film",
    title: "No clips yet",
    text: "Events the bridge records appear here once they are uploaded to the bucket.",
    action: "Check again",
  },
  "no-match": {
    icon: "filter",
    title: "No events match these filters",
    text: "Try another camera, subject or date.",
    action: "Clear filters",
  },
};

function message(kind, detail = "") {
  const m = MESSAGES[kind] || {
    icon: "alert", title: "The clips cannot be opened", text: "", action: "Try again",
  };
  $("message-icon").setAttribute("href", `#i-${m.icon}`);
  $("message").dataset.kind = kind;
  $("message-title").textContent = m.title;
  $("message-text").textContent = m.text;
  $("message-detail").textContent = detail;
  const action = $("message-action");
  action.textContent = m.action || "";
  show(action, Boolean(m.action));
  show($("message"), true);
  show($("loading"), false);
}

function hideMessage() {
  show($("message"), false);
}

$("message-action").addEventListener("click", () => {
  const kind = $("message").dataset.kind;
  if (kind === "no-match") filters.clear();
  else reloadManifest();
});

function failure(err) {
  if (err instanceof ApiError && err.status === 403) return message("forbidden", err.message);
  if (err instanceof ApiError) return message(err.kind, err.message);
  return message("error", String(err));
}

// ---- the manifest: /api/status ---------------------------------------------------------------

/** Polls /api/status until it is not loading; `full`: the big progress panel, else the thin
 *  bar in the top bar (the timeline stays while it re-reads). `status.polls`: how many asks.
 *  `onEarly`: called once if the first load has events to show before it ends (the newest,
 *  whole as far as the walk down the manifest has verified); the thin bar stays meanwhile. */
async function whenLoaded(full, onEarly = null) {
  let big = full;
  show(big ? $("loading") : $("busy"), true);
  try {
    for (let polls = 1; ; polls += 1) {
      const status = await getJSON("/api/status");
      if (status.state !== "loading") return { ...status, polls };
      if (onEarly && status.early && status.events > 0) {
        big = false;
        show($("loading"), false);
        show($("busy"), true);
        onEarly(status);
        onEarly = null;
      }
      const bar = big ? $("loading-bar") : $("busy");
      const p = status.progress || {};
      const [done, total, what] = p.of_segments
        ? [p.segments, p.of_segments, "segment"] : [p.done, p.total, "bridge"];
      if (total) {
        bar.max = total;
        bar.value = done;
        const text = `Verifying the manifest: ${figure(done)} of ${count(total, what)}…`;
        if (big) $("loading-what").textContent = text;
        else if (status.early) verifying(text);
      } else {
        bar.removeAttribute("value");
      }
      await sleep(POLL_MS);
    }
  } finally {
    show($("loading"), false);
    show($("busy"), false);
  }
}

/** While the first load goes on under the newest events: where it is, in the verdict's place. */
function verifying(text) {
  $("trust").replaceChildren(el("span", { class: "pill muted", id: "verifying" },
    icon("lock"), el("span", { text })));
}

/** Shows the verdict; false when there is nothing to list (an error state is shown). */
function apply(status) {
  renderTrust(status);
  if (status.state === "error") {
    const err = status.error || { kind: "error", message: "" };
    ready = false;
    show($("filters"), false);
    timeline.reset();
    message(err.kind, err.message);
    return false;
  }
  ready = true;
  return true;
}

async function start() {
  // The first page is asked for alongside the status: when the manifest was already read (the
  // usual case: the app reads it as it starts), that saves a round trip before the first cards.
  const early = getJSON(eventsPath(filters, null, PAGE)).catch(() => null);
  let status;
  let shownEarly = null; // the newest events, shown while the rest of the manifest is verified
  try {
    status = await whenLoaded(true, () => { shownEarly = firstPage(); });
  } catch (err) {
    failure(err);
    return;
  }
  if (shownEarly) {
    await shownEarly;
    if (apply(status)) await reloadList(true);
    return;
  }
  // Used only if the manifest was read before it was asked for (same number of events).
  const usable = status.polls === 1
    ? early.then((page) => (page && page.total === status.events ? page : null)) : null;
  if (apply(status)) await firstPage(usable);
}

async function reloadManifest() {
  hideMessage();
  try {
    await postJSON("/api/refresh");
    const status = await whenLoaded(!ready);
    if (apply(status)) await reloadList();
  } catch (err) {
    failure(err);
  }
}

/** After a share or delete: the bridge recorded it, the server reads the manifest again. */
async function afterAction(reopenId) {
  try {
    const status = await whenLoaded(false);
    if (!apply(status)) return;
    await reloadList();
    if (reopenId && player.open && player.event && player.event.id === reopenId) {
      const fresh = timeline.event(reopenId);
      if (fresh) player.describe(fresh);
    }
  } catch (err) {
    toast(err.message, "bad");
  }
}

setInterval(async () => {
  if (!ready || list.busy) return;
  try {
    const status = await getJSON("/api/status");
    if (status.state === "ready") renderTrust(status);
  } catch {
    // the next poll tries again; a real failure shows on the next action
  }
}, WATCH_MS);

async function playFailed(event) {
  try {
    const status = await getJSON("/api/status");
    const problems = renderTrust(status);
    const mine = problems.find((p) => p.object === event.id);
    return mine ? mine.message : null;
  } catch (err) {
    return err.message;
  }
}

// ---- the timeline: pages, filters, infinite scrolling ----------------------------------------

function newRequest() {
  list.generation += 1;
  if (list.controller) list.controller.abort();
  list.controller = new AbortController();
  return { generation: list.generation, signal: list.controller.signal };
}

function shown(page) {
  filters.render(page);
  if (!timeline.size) message(filters.size ? "no-match" : "empty");
  else hideMessage();
  show($("end"), ready && timeline.size > 0 && !list.next);
  $("end").textContent = timeline.size ? "That is all of them." : "";
}

/** The first page for the current filters (`early`: a request for it already made). */
async function firstPage(early = null) {
  const req = newRequest();
  timeline.reset();
  list.next = null;
  list.busy = true;
  show($("more"), true);
  show($("end"), false);
  try {
    const page = (early && (await early)) || (await getJSON(eventsPath(filters, null, PAGE), req.signal));
    if (req.generation !== list.generation) return;
    timeline.append(page.events);
    list.next = page.next;
    shown(page);
  } catch (err) {
    if (err.name !== "AbortError") failure(err);
  } finally {
    if (req.generation === list.generation) {
      list.busy = false;
      show($("more"), false);
      rearm();
    }
  }
}

async function morePages() {
  if (list.busy || !list.next || !ready) return;
  const req = newRequest();
  list.busy = true;
  show($("more"), true);
  try {
    const page = await getJSON(eventsPath(filters, list.next, PAGE), req.signal);
    if (req.generation !== list.generation) return;
    timeline.append(page.events);
    list.next = page.next;
    shown(page);
  } catch (err) {
    if (err.name !== "AbortError") toast(`Could not load more: ${err.message}`, "bad");
  } finally {
    if (req.generation === list.generation) {
      list.busy = false;
      show($("more"), false);
      rearm();
    }
  }
}

/** Reads again at least as many events as were on the page and swaps them in where the page
 *  was scrolled to (after a refresh, a share, a delete). `keep`: the cards shown stay when the
 *  same events come first, in the same order (the end of a first load shown early). */
async function reloadList(keep = false) {
  const req = newRequest();
  const want = Math.max(timeline.size, PAGE);
  const y = window.scrollY;
  list.busy = true;
  try {
    const events = [];
    let cursor = null;
    let page;
    do {
      page = await getJSON(eventsPath(filters, cursor, REFILL), req.signal);
      if (req.generation !== list.generation) return;
      events.push(...page.events);
      cursor = page.next;
    } while (cursor && events.length < want);
    const same = keep && timeline.events.every((e, i) => events[i] && events[i].id === e.id);
    if (!same) timeline.reset();
    timeline.append(events);
    list.next = page.next;
    shown(page);
    window.scrollTo(0, y);
  } catch (err) {
    if (err.name !== "AbortError") failure(err);
  } finally {
    if (req.generation === list.generation) {
      list.busy = false;
      rearm();
    }
  }
}

const observer = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) morePages();
}, { rootMargin: "0px 0px 1200px 0px" });

/** Observing again reports the sentinel's current state: a page too short to push it out of
 *  view asks for the next one at once. */
function rearm() {
  observer.unobserve($("sentinel"));
  observer.observe($("sentinel"));
}

async function openEvent(id) {
  const event = timeline.event(id);
  if (event) player.show(event);
}

async function neighbour(id, step) {
  let next = timeline.neighbour(id, step);
  if (!next && step > 0 && list.next) {
    await morePages();
    next = timeline.neighbour(id, step);
  }
  return next;
}

$("refresh").addEventListener("click", () => reloadManifest());

start();
