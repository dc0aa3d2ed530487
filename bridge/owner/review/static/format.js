// How times, durations, subjects and keys read on the page (the user's locale and time zone;
// the API speaks milliseconds since the epoch, UTC).

const time = new Intl.DateTimeFormat(undefined, {
  hour: "numeric", minute: "2-digit", second: "2-digit",
});
const day = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long" });
const dayYear = new Intl.DateTimeFormat(undefined, {
  weekday: "long", day: "numeric", month: "long", year: "numeric",
});
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const number = new Intl.NumberFormat();

const pad = (n) => String(n).padStart(2, "0");

/** "2026-12-06" in local time: the day an event is grouped under. */
export function dayKey(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** Milliseconds of local midnight starting the day "YYYY-MM-DD" (+ `plusDays`). */
export function dayStart(key, plusDays = 0) {
  const [y, m, d] = key.split("-").map(Number);
  return new Date(y, m - 1, d + plusDays).getTime();
}

export function dayLabel(ms, now = Date.now()) {
  const key = dayKey(ms);
  if (key === dayKey(now)) return "Today";
  if (key === dayKey(dayStart(dayKey(now), -1))) return "Yesterday";
  const sameYear = new Date(ms).getFullYear() === new Date(now).getFullYear();
  return (sameYear ? day : dayYear).format(ms);
}

/** The date under "Today" and "Yesterday" (other days say it in their label). */
export function dayDate(ms, now = Date.now()) {
  const label = dayLabel(ms, now);
  return label === "Today" || label === "Yesterday" ? day.format(ms) : "";
}

export const clock = (ms) => time.format(ms);

/** A moment, as short as it can be said: the time today, else date and time. */
export function when(ms, now = Date.now()) {
  return dayKey(ms) === dayKey(now) ? time.format(ms) : dateTime.format(ms);
}

export const longWhen = (ms) => `${dayLabel(ms)}, ${time.format(ms)}`;

/** 4.6 -> "0:05", 754 -> "12:34", 3725 -> "1:02:05" */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export const count = (n, one, many = `${one}s`) => `${number.format(n)} ${n === 1 ? one : many}`;
export const figure = (n) => number.format(n);

/** age1qyqszqgp…3t3cx3: enough to recognise a key (the whole of it goes in a title). */
export function shortKey(key, head = 12, tail = 6) {
  return key.length > head + tail + 4 ? `${key.slice(0, head)}…${key.slice(-tail)}` : key;
}

const SUBJECT_ICONS = new Set(["person", "vehicle", "animal", "package", "doorbell", "motion"]);
export const subjectIcon = (s) => (SUBJECT_ICONS.has(s) ? s : "motion");
export const subjectName = (s) => s.charAt(0).toUpperCase() + s.slice(1);
