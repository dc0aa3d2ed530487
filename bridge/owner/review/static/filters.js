// The filters above the timeline: cameras and subjects as toggle chips (from what the server
// says the bucket holds), a date range, kept in the address's #fragment so that a reload keeps
// them. A change asks the server again (app.js); nothing is filtered in the page.

import { $, el, icon, show } from "./dom.js";
import { count, dayStart, figure, subjectIcon, subjectName } from "./format.js";

const DATE = /^\d{4}-\d{2}-\d{2}$/;

function chip(label, pressed, onClick, iconName) {
  const b = el("button", { class: "filter-chip", type: "button", "aria-pressed": String(pressed) },
    iconName ? icon(iconName) : null, el("span", { text: label }));
  b.addEventListener("click", onClick);
  return b;
}

export class Filters {
  /** `onChange()` runs after any change; `extra`: more #fragment keys to keep (limit=…). */
  constructor(onChange, extra = {}) {
    this.onChange = onChange;
    this.extra = extra;
    this.cameras = new Set();
    this.subjects = new Set();
    this.from = null; // ms: events that end at or after it
    this.to = null; // ms: events that start before it
    this.drawn = { cameras: "", subjects: "" };
    for (const id of ["f-from", "f-to"]) {
      $(id).addEventListener("change", () => { this.readDates(); this.changed(); });
    }
    $("f-clear").addEventListener("click", () => this.clear());
    $("f-toggle").addEventListener("click", () => {
      const open = !$("filters").classList.contains("open");
      $("filters").classList.toggle("open", open);
      $("f-toggle").setAttribute("aria-expanded", String(open));
    });
    this.fromHash();
  }

  get size() {
    return this.cameras.size + this.subjects.size + (this.from !== null) + (this.to !== null);
  }

  /** The chips (again only when the choices changed), the summary and the badge. */
  render(page) {
    const cameras = JSON.stringify([page.cameras, [...this.cameras]]);
    const subjects = JSON.stringify([page.subjects, [...this.subjects]]);
    if (cameras !== this.drawn.cameras) {
      this.drawn.cameras = cameras;
      this.row($("f-cameras"), page.cameras, this.cameras, () => "camera", (c) => c);
    }
    if (subjects !== this.drawn.subjects) {
      this.drawn.subjects = subjects;
      this.row($("f-subjects"), page.subjects, this.subjects, subjectIcon, subjectName);
    }
    const n = this.size;
    const where = page.early ? "so far, verifying the rest" : "in the bucket";
    $("summary").textContent = n
      ? `Showing ${figure(page.matched)} of ${count(page.total, "event")} ${where}`
      : `${count(page.total, "event")} ${where}`;
    show($("f-clear"), n > 0);
    $("f-count").textContent = String(n);
    show($("f-count"), n > 0);
    show($("filters"), true);
  }

  row(box, all, chosen, iconFor, nameFor) {
    const toggle = (value) => () => {
      if (value === null) chosen.clear();
      else if (chosen.has(value)) chosen.delete(value);
      else chosen.add(value);
      this.changed();
    };
    box.replaceChildren(
      chip("All", chosen.size === 0, toggle(null), null),
      ...all.map((v) => chip(nameFor(v), chosen.has(v), toggle(v), iconFor(v))),
    );
  }

  changed() {
    const q = new URLSearchParams();
    for (const c of this.cameras) q.append("camera", c);
    for (const s of this.subjects) q.append("subject", s);
    if ($("f-from").value) q.set("from", $("f-from").value);
    if ($("f-to").value) q.set("to", $("f-to").value);
    for (const [k, v] of Object.entries(this.extra)) q.set(k, v);
    const hash = q.toString();
    history.replaceState(null, "", hash ? `#${hash}` : location.pathname);
    this.drawn = { cameras: "", subjects: "" };
    this.onChange();
  }

  clear() {
    this.cameras.clear();
    this.subjects.clear();
    $("f-from").value = "";
    $("f-to").value = "";
    this.readDates();
    this.changed();
  }

  readDates() {
    const from = $("f-from").value;
    const to = $("f-to").value;
    this.from = from ? dayStart(from) : null;
    this.to = to ? dayStart(to, 1) : null; // the whole of the last day
    $("f-to").min = from;
    $("f-from").max = to;
  }

  fromHash() {
    const q = new URLSearchParams(location.hash.slice(1));
    for (const c of q.getAll("camera")) this.cameras.add(c);
    for (const s of q.getAll("subject")) this.subjects.add(s);
    if (DATE.test(q.get("from") || "")) $("f-from").value = q.get("from");
    if (DATE.test(q.get("to") || "")) $("f-to").value = q.get("to");
    this.readDates();
  }
}
