// The timeline: days (newest first), within a day one group per camera, in each a grid of
// event cards. Pages from /api/events are appended where they belong; nothing already on the
// page is rebuilt, so it stays fast with thousands of events (and off-screen days skip
// rendering: content-visibility in style.css).

import { eventPath } from "./api.js";
import { el, icon } from "./dom.js";
import {
  clock, dayDate, dayKey, dayLabel, duration, shortKey, subjectIcon, subjectName,
} from "./format.js";

const EAGER = 12;

export function subjectChips(subjects) {
  return el("span", { class: "subject-chips" }, ...subjects.map((s) =>
    el("span", { class: "chip", "data-subject": s }, icon(subjectIcon(s)),
      el("span", { text: subjectName(s) }))));
}

/** The shares still in the bucket (a deleted share copy is history, not exposure). */
export const liveShares = (event) => event.shared.filter((s) => !s.deleted);

export function sharedText(shares) {
  return shares.length === 1
    ? `Shared with ${shortKey(shares[0].recipient)}`
    : `Shared with ${shares.length} keys`;
}

/** "Shared with age1ql3z7h…mcac8p" on a card (every key in full in its title). */
function sharedLine(shares) {
  const who = shares.length === 1
    ? el("code", { text: shortKey(shares[0].recipient, 10, 6) })
    : el("span", { text: `${shares.length} keys` });
  return el("span", { class: "shared-line", title: shares.map((s) => s.recipient).join("\n") },
    icon("share"), el("span", { text: "Shared with" }), who);
}

function poster(event, eager) {
  const thumb = el("span", { class: "thumb" });
  const placeholder = () => {
    thumb.classList.add("no-poster");
    thumb.prepend(icon("camera", "placeholder"));
  };
  if (event.poster) {
    const img = el("img", {
      loading: eager ? "eager" : "lazy", decoding: "async", alt: "",
      src: eventPath(event.id, "poster"),
    });
    img.addEventListener("error", () => { img.remove(); placeholder(); }, { once: true });
    thumb.append(img);
  } else {
    placeholder();
  }
  thumb.append(el("span", { class: "play-mark" }, icon("play")));
  thumb.append(el("span", { class: "badge duration", text: duration(event.duration_s) }));
  if (event.state !== "complete") {
    thumb.append(el("span", { class: `badge state ${event.state.replace(" ", "-")}`, text: event.state }));
  }
  return thumb;
}

function card(event, eager) {
  const shares = liveShares(event);
  const label = [event.camera, clock(event.start_ms), duration(event.duration_s),
    ...event.subjects, shares.length ? sharedText(shares) : ""].filter(Boolean).join(", ");
  const button = el("button", {
    class: "card", type: "button", "data-id": event.id, "aria-label": label,
  },
  poster(event, eager),
  el("span", { class: "meta" },
    el("span", { class: "meta-top" },
      el("span", { class: "time", text: clock(event.start_ms) }),
      el("span", { class: "cam", text: event.camera })),
    subjectChips(event.subjects),
    shares.length ? sharedLine(shares) : null));
  return el("li", { class: "cell" }, button);
}

export class Timeline {
  constructor(root, onOpen) {
    this.root = root;
    this.root.addEventListener("click", (e) => {
      const target = e.target.closest(".card");
      if (target) onOpen(target.dataset.id);
    });
    this.reset();
  }

  reset() {
    this.root.replaceChildren();
    this.days = new Map(); // "YYYY-MM-DD" -> {section, cameras: Map(camera -> <ul>)}
    this.events = []; // newest first, as loaded
    this.byId = new Map(); // id -> {event, cell}
  }

  get size() {
    return this.events.length;
  }

  append(events) {
    const now = Date.now();
    for (const event of events) {
      if (this.byId.has(event.id)) continue;
      // The first cards are on screen: their posters are asked for as they are made, not
      // after a layout has found them in view.
      const cell = card(event, this.events.length < EAGER);
      this.grid(event, now).append(cell);
      this.byId.set(event.id, { event, cell });
      this.events.push(event);
    }
  }

  grid(event, now) {
    const key = dayKey(event.start_ms);
    let day = this.days.get(key);
    if (!day) {
      const id = `day-${key}`;
      const section = el("section", { class: "day", "aria-labelledby": id },
        el("h2", { class: "day-title", id },
          el("span", { text: dayLabel(event.start_ms, now) }),
          el("span", { class: "day-date", text: dayDate(event.start_ms, now) })));
      day = { section, cameras: new Map() };
      this.days.set(key, day);
      this.root.append(section);
    }
    let grid = day.cameras.get(event.camera);
    if (!grid) {
      grid = el("ul", { class: "grid" });
      day.section.append(el("div", { class: "cam-group" },
        el("h3", { class: "cam-title" }, icon("camera"), el("span", { text: event.camera })),
        grid));
      day.cameras.set(event.camera, grid);
    }
    return grid;
  }

  event(id) {
    const hit = this.byId.get(id);
    return hit ? hit.event : null;
  }

  /** The event `step` places away in the order shown (-1: newer, +1: older), or null. */
  neighbour(id, step) {
    const i = this.events.findIndex((e) => e.id === id);
    return i < 0 ? null : this.events[i + step] || null;
  }

  card(id) {
    const hit = this.byId.get(id);
    return hit ? hit.cell.querySelector(".card") : null;
  }

  /** Takes an event off the page at once (deleted), dropping groups it leaves empty. */
  remove(id) {
    const hit = this.byId.get(id);
    if (!hit) return;
    const grid = hit.cell.parentElement;
    hit.cell.remove();
    this.byId.delete(id);
    this.events = this.events.filter((e) => e.id !== id);
    if (grid && !grid.children.length) {
      const day = this.days.get(dayKey(hit.event.start_ms));
      grid.parentElement.remove();
      day.cameras.delete(hit.event.camera);
      if (!day.cameras.size) {
        day.section.remove();
        this.days.delete(dayKey(hit.event.start_ms));
      }
    }
  }
}
